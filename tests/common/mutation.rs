//! Deterministic randomness for tests that corrupt or generate requests: a seeded generator
//! (so a failure reproduces) and a byte mutator.
#![allow(dead_code)] // each test binary uses a part of it

/// xorshift64*: small, deterministic, good enough to pick mutations and shapes.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// `seed` with one to five mutations: bits flipped, bytes replaced or inserted from
/// `alphabet`, runs copied elsewhere, bytes removed, the tail cut off.
pub fn mutate(seed: &[u8], rng: &mut Rng, alphabet: &[u8]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for _ in 0..=rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let at = rng.below(bytes.len());
        match rng.below(6) {
            0 => bytes[at] ^= 1 << rng.below(8),
            1 => bytes[at] = alphabet[rng.below(alphabet.len())],
            2 => bytes.truncate(at),
            3 => {
                let end = (at + rng.below(16)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = rng.below(bytes.len());
                bytes.splice(to..to, copy);
            }
            4 => {
                bytes.remove(at);
            }
            _ => bytes.insert(at, alphabet[rng.below(alphabet.len())]),
        }
    }
    bytes
}
