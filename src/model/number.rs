//! Numbers as points carry them: an integer (`as_int`) or a double (`as_double`).
//!
//! Integers stay integers end to end, so a count above 2^53 is stored, summed and rendered
//! exactly; doubles stay doubles; a sum that mixes both is a double. A stream's own total is
//! an `i64` like its points; should adding two integers leave the `i64` range, the result is
//! the nearest double (never a wrapped integer). Aggregation across streams adds in `i128`
//! ([`Total`]), which cannot overflow for any number of `i64` parts a store can hold.

use std::cmp::Ordering;

/// One number, as sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Int(i64),
    Double(f64),
}

impl Number {
    pub fn as_f64(self) -> f64 {
        match self {
            Number::Int(value) => value as f64,
            Number::Double(value) => value,
        }
    }

    /// NaN carries no number; an integer always does.
    pub fn is_nan(self) -> bool {
        matches!(self, Number::Double(value) if value.is_nan())
    }

    /// The sum: integers add exactly unless the result leaves the `i64` range, where it is
    /// the nearest double; anything with a double in it is a double.
    pub fn plus(self, other: Number) -> Number {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a
                .checked_add(b)
                .map_or_else(|| Number::Double(a as f64 + b as f64), Number::Int),
            (a, b) => Number::Double(a.as_f64() + b.as_f64()),
        }
    }

    /// Whether this is lower than `other`, comparing integers exactly.
    pub fn is_below(self, other: Number) -> bool {
        self.compare(other) == Some(Ordering::Less)
    }

    /// The same number, whichever way it was sent (`5` and `5.0` are the same; NaN is the
    /// same as NaN, as a resent NaN point is the same point).
    pub fn same(self, other: Number) -> bool {
        match (self, other) {
            (Number::Double(a), Number::Double(b)) if a.is_nan() && b.is_nan() => true,
            _ => self.compare(other) == Some(Ordering::Equal),
        }
    }

    fn compare(self, other: Number) -> Option<Ordering> {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }
}

/// A sum of numbers across streams: exact while every part is an integer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Total {
    Int(i128),
    Double(f64),
}

impl Default for Total {
    fn default() -> Self {
        Total::Int(0)
    }
}

impl From<Number> for Total {
    fn from(number: Number) -> Total {
        match number {
            Number::Int(value) => Total::Int(i128::from(value)),
            Number::Double(value) => Total::Double(value),
        }
    }
}

impl Total {
    /// Adds a number; the total becomes a double once a double is added.
    pub fn add(&mut self, number: Number) {
        *self = match (*self, number) {
            // Each part is an i64, so the i128 total overflows only after 2^64 parts.
            (Total::Int(total), Number::Int(value)) => {
                Total::Int(total.saturating_add(i128::from(value)))
            }
            (total, number) => Total::Double(total.as_f64() + number.as_f64()),
        };
    }

    pub fn as_f64(self) -> f64 {
        match self {
            Total::Int(value) => value as f64,
            Total::Double(value) => value,
        }
    }

    /// The total as a [`Number`] when it fits one exactly: an integer outside the `i64`
    /// range gives `None` (the caller says so and falls back to [`Total::as_f64`]).
    pub fn to_number(self) -> Option<Number> {
        match self {
            Total::Int(value) => i64::try_from(value).ok().map(Number::Int),
            Total::Double(value) => Some(Number::Double(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_add_exactly_past_2_to_the_53() {
        let big = Number::Int((1 << 53) + 1);
        assert_eq!(big.plus(Number::Int(2)), Number::Int((1 << 53) + 3));
    }

    #[test]
    fn an_integer_overflow_becomes_the_nearest_double_never_a_wrap() {
        let sum = Number::Int(i64::MAX).plus(Number::Int(1));
        assert_eq!(sum, Number::Double(i64::MAX as f64 + 1.0));
    }

    #[test]
    fn a_mix_is_a_double() {
        assert_eq!(
            Number::Int(2).plus(Number::Double(0.5)),
            Number::Double(2.5)
        );
        let mut total = Total::default();
        total.add(Number::Int(2));
        total.add(Number::Double(0.5));
        assert_eq!(total, Total::Double(2.5));
    }

    #[test]
    fn totals_past_i64_stay_exact_and_say_they_do_not_fit() {
        let mut total = Total::default();
        total.add(Number::Int(i64::MAX));
        total.add(Number::Int(i64::MAX));
        assert_eq!(total, Total::Int(2 * i128::from(i64::MAX)));
        assert_eq!(total.to_number(), None);
    }

    #[test]
    fn comparisons_are_exact_for_integers() {
        let a = Number::Int((1 << 53) + 1);
        let b = Number::Int(1 << 53);
        assert!(b.is_below(a));
        assert!(!a.is_below(b));
        assert!(Number::Int(5).same(Number::Double(5.0)));
        assert!(Number::Double(f64::NAN).same(Number::Double(f64::NAN)));
    }
}
