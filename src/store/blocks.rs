//! Attribute blocks read before: the bytes that carried a point's attributes, and what
//! reading them gave.
//!
//! Workers resend the same streams every interval, so the run of `KeyValue` fields in each
//! data point comes back byte for byte. Reading such a run is a function of its bytes alone:
//! a run byte-equal to one read before reads the same pairs, and names the same attribute
//! set. The in-place reader (`receiver::wire`) looks each point's run up here
//! ([`KnownBlocks::find`]); on a hit it takes the pairs read the first time instead of
//! decoding the run, checking its UTF-8 and, in the store, sorting and hashing it again, and
//! the store finds the stream by the set's hash and address (`InstanceWriter::point_known`).
//!
//! Blocks are learnt after a request is stored ([`Store::learn_blocks`]), from points that
//! reached a stream: the receiver holds a read guard on the table while it reads and stores a
//! request, and takes the write lock only afterwards, to add what it saw for the first time.
//!
//! Bounds: a block longer than [`MAX_BLOCK_BYTES`], or costing more than 1 KiB with its
//! pairs, is not kept, the table holds at most [`MAX_BLOCKS`] (8 MiB at most), and one
//! request copies out at most 1024 new blocks. Requests larger than
//! `receiver::KNOWN_BLOCKS_BODY_BYTES` are read without the table, so that no read guard is
//! held for long (a waiting writer makes new readers wait). A full table learns nothing
//! more (the receiver then does not even copy new blocks out) until the next liveness sweep
//! empties it, at most once a second, and it is learnt again from the requests that follow;
//! so blocks no worker sends any more do not stay, and a sender of ever-new attributes costs
//! the others some hits, not memory. It is also emptied after evictions, so that it does not
//! keep sets alive that no stream uses any more.

use std::hash::BuildHasher;
use std::sync::{Arc, PoisonError, RwLockReadGuard};

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use super::Store;
use super::ingest::hash_of_set;
use crate::model::{AttrRef, AttrValue, Attributes};

/// The longest run of attribute bytes kept: about ten ordinary attributes.
pub const MAX_BLOCK_BYTES: usize = 512;

/// The most a kept block may cost in memory, its bytes and its pairs together: a block of
/// many tiny attributes (a pair can take two bytes on the wire and 48 in memory) is not
/// kept.
const MAX_BLOCK_COST: usize = 1024;

/// How many blocks are kept: at most 8 MiB with blocks of the costliest kind.
pub const MAX_BLOCKS: usize = 8192;

/// How many new blocks one request copies out at most, so that concurrent requests seeing
/// an empty table do not each copy out a whole table's worth.
const MAX_NEW_PER_REQUEST: usize = 1024;

/// The blocks read before, found by their bytes.
#[derive(Default)]
pub struct KnownBlocks {
    hasher: RandomState,
    table: HashTable<KnownBlock>,
}

/// One block and what reading it gave.
#[derive(Debug)]
pub struct KnownBlock {
    block: NewBlock,
    /// `ingest::hash_of_set` of the block's set, the part of a stream's hash its attributes
    /// give.
    pub(super) set_hash: u64,
}

/// A block seen for the first time, for [`Store::learn_blocks`].
#[derive(Debug)]
pub struct NewBlock {
    bytes: Box<[u8]>,
    /// The pairs in wire order, duplicates included, as the reader pushed them.
    pairs: Box<[(Box<str>, AttrValue)]>,
    /// The store's copy of the set the pairs make (sorted, each key once).
    set: Arc<Attributes>,
}

/// The blocks one request shows the store for the first time: at most as many as the table
/// had room for when the request was read, so a request of ever-new attributes copies out
/// no more than can be kept.
#[derive(Debug)]
pub struct NewBlocks {
    blocks: Vec<NewBlock>,
    room: usize,
}

impl NewBlocks {
    /// Room for what `known` can still learn.
    pub fn for_table(known: &KnownBlocks) -> NewBlocks {
        NewBlocks {
            blocks: Vec::new(),
            room: MAX_BLOCKS
                .saturating_sub(known.len())
                .min(MAX_NEW_PER_REQUEST),
        }
    }

    pub fn has_room(&self) -> bool {
        self.blocks.len() < self.room
    }

    /// Adds `block` if there is room.
    pub fn push(&mut self, block: NewBlock) {
        if self.has_room() {
            self.blocks.push(block);
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

impl Extend<NewBlock> for NewBlocks {
    fn extend<I: IntoIterator<Item = NewBlock>>(&mut self, blocks: I) {
        blocks.into_iter().for_each(|block| self.push(block));
    }
}

impl NewBlock {
    /// `bytes` read as `pairs` (wire order), which the store keeps as `set`. `None` when
    /// the block is too long or would cost too much to keep.
    pub fn new(
        bytes: &[u8],
        pairs: &[(&str, AttrRef<'_>)],
        set: &Arc<Attributes>,
    ) -> Option<NewBlock> {
        let cost = bytes.len()
            + pairs.len() * std::mem::size_of::<(Box<str>, AttrValue)>()
            + pairs
                .iter()
                .map(|(key, value)| key.len() + value_bytes(*value))
                .sum::<usize>();
        (bytes.len() <= MAX_BLOCK_BYTES && cost <= MAX_BLOCK_COST).then(|| NewBlock {
            bytes: bytes.into(),
            pairs: pairs
                .iter()
                .map(|(key, value)| ((*key).into(), value.to_owned_value()))
                .collect(),
            set: Arc::clone(set),
        })
    }
}

/// The heap bytes an owned copy of `value` holds (the in-place reader reads only scalars).
fn value_bytes(value: AttrRef<'_>) -> usize {
    match value {
        AttrRef::Str(text) => text.len(),
        AttrRef::Bytes(bytes) => bytes.len(),
        _ => 0,
    }
}

impl KnownBlock {
    /// The pairs read from this block, in wire order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, AttrRef<'_>)> {
        self.block
            .pairs
            .iter()
            .map(|(key, value)| (&**key, value.as_ref()))
    }

    /// The store's copy of the set the pairs make.
    pub(super) fn set(&self) -> &Arc<Attributes> {
        &self.block.set
    }
}

impl KnownBlocks {
    /// The block byte-equal to `bytes`, if it was read before.
    pub fn find(&self, bytes: &[u8]) -> Option<&KnownBlock> {
        if bytes.len() > MAX_BLOCK_BYTES || self.table.is_empty() {
            return None;
        }
        let hash = self.hasher.hash_one(bytes);
        self.table.find(hash, |known| *known.block.bytes == *bytes)
    }

    /// How many blocks are kept.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Whether the table learns nothing more until it is emptied.
    pub fn is_full(&self) -> bool {
        self.table.len() >= MAX_BLOCKS
    }

    /// Keeps `block` unless it is known; `set_hash` gives its set's hash.
    fn learn(&mut self, block: NewBlock, set_hash: impl FnOnce(&Attributes) -> u64) {
        let hash = self.hasher.hash_one(&*block.bytes);
        if self
            .table
            .find(hash, |known| known.block.bytes == block.bytes)
            .is_some()
            || self.is_full()
        {
            return;
        }
        let known = KnownBlock {
            set_hash: set_hash(&block.set),
            block,
        };
        let hasher = &self.hasher;
        self.table
            .insert_unique(hash, known, |known| hasher.hash_one(&*known.block.bytes));
    }
}

impl Store {
    /// The blocks read before, for reading one request. Hold the guard only while the
    /// request is read and stored, and never while waiting for an instance lock: learning
    /// takes the write lock.
    pub fn known_blocks(&self) -> RwLockReadGuard<'_, KnownBlocks> {
        self.shared
            .known_blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds blocks seen for the first time. Call it with no guard from
    /// [`Store::known_blocks`] held by this thread.
    pub fn learn_blocks(&self, blocks: NewBlocks) {
        if blocks.is_empty() {
            return;
        }
        let build = &self.shared.stream_hasher;
        let mut known = self
            .shared
            .known_blocks
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for block in blocks.blocks {
            known.learn(block, |set| hash_of_set(build, set));
        }
    }

    /// Empties a full table, to learn afresh (the liveness sweep does, at most once a second).
    pub(super) fn forget_known_blocks_if_full(&self) {
        if self.known_blocks().is_full() {
            self.forget_known_blocks();
        }
    }

    /// Forgets every block, so the sets they name can be forgotten too.
    pub(super) fn forget_known_blocks(&self) {
        self.shared
            .known_blocks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .table
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::{Liveness, StoreSettings};

    /// New blocks past the per-request cap, to fill a table quickly.
    fn blocks(new: impl IntoIterator<Item = NewBlock>) -> NewBlocks {
        let mut blocks = NewBlocks {
            blocks: Vec::new(),
            room: usize::MAX,
        };
        blocks.extend(new);
        blocks
    }

    #[test]
    fn a_request_copies_out_only_what_the_table_has_room_for() {
        let store = Store::new(StoreSettings::for_tests(10));
        let set = Arc::new(Attributes::default());
        store.learn_blocks(blocks(
            (0..MAX_BLOCKS as u32 - 2).map(|n| block(&n.to_le_bytes(), &set)),
        ));
        let mut new = NewBlocks::for_table(&store.known_blocks());
        for n in 0..10u32 {
            new.push(block(&(n + 1_000_000).to_le_bytes(), &set));
        }
        assert_eq!(new.len(), 2);
        assert!(!new.has_room());

        // However empty the table, one request copies out at most MAX_NEW_PER_REQUEST.
        let mut new = NewBlocks::for_table(&KnownBlocks::default());
        for n in 0..MAX_NEW_PER_REQUEST as u32 + 1 {
            new.push(block(&n.to_le_bytes(), &set));
        }
        assert_eq!(new.len(), MAX_NEW_PER_REQUEST);
    }

    fn block(bytes: &[u8], set: &Arc<Attributes>) -> NewBlock {
        let pairs = [("k", AttrRef::Str("v"))];
        NewBlock::new(bytes, &pairs, set).unwrap_or_else(|| panic!("{} bytes kept", bytes.len()))
    }

    #[test]
    fn a_learnt_block_is_found_by_its_bytes_only() {
        let store = Store::new(StoreSettings::for_tests(10));
        let set = Arc::new(Attributes::new(vec![(
            "k".into(),
            AttrValue::Str("v".into()),
        )]));
        store.learn_blocks(blocks([block(b"one", &set), block(b"one", &set)]));
        let known = store.known_blocks();
        assert_eq!(known.len(), 1, "learnt once");
        let found = known
            .find(b"one")
            .map(|block| block.pairs().collect::<Vec<_>>());
        assert_eq!(found, Some(vec![("k", AttrRef::Str("v"))]));
        assert!(known.find(b"onE").is_none());
        assert!(known.find(b"on").is_none());
    }

    #[test]
    fn the_table_is_bounded_in_blocks_and_in_bytes() {
        let store = Store::new(StoreSettings::for_tests(10));
        let set = Arc::new(Attributes::default());
        let long = vec![7u8; MAX_BLOCK_BYTES + 1];
        assert!(NewBlock::new(&long, &[], &set).is_none());
        assert!(store.known_blocks().find(&long).is_none());
        // 128 empty pairs fit in 256 bytes on the wire, and in memory take 6 KiB.
        let tiny = vec![("", AttrRef::Empty); 128];
        assert!(NewBlock::new(&[0x3a, 0x00].repeat(128), &tiny, &set).is_none());

        store.learn_blocks(blocks(
            (0..MAX_BLOCKS as u32 + 1).map(|n| block(&n.to_le_bytes(), &set)),
        ));
        {
            let known = store.known_blocks();
            // Full at MAX_BLOCKS: the last one is not learnt.
            assert_eq!(known.len(), MAX_BLOCKS);
            assert!(known.is_full());
            assert!(known.find(&0u32.to_le_bytes()).is_some());
            assert!(known.find(&(MAX_BLOCKS as u32).to_le_bytes()).is_none());
        }
        // The sweep empties a full table, which then learns again.
        let liveness = Liveness {
            ttl: Duration::from_secs(60),
        };
        store.sweep_at(Instant::now(), &liveness);
        assert!(store.known_blocks().is_empty());
        store.learn_blocks(blocks([block(b"again", &set)]));
        store.sweep_at(Instant::now(), &liveness);
        assert_eq!(
            store.known_blocks().len(),
            1,
            "only a full table is emptied"
        );
    }
}
