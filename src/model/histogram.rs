//! Adding values: histograms bucket-wise for explicit buckets and at a common scale for
//! exponential ones; [`StreamValue`], what a stream reports, by shape.
//!
//! The store uses these to accumulate delta points and to fold a reset stream's previous
//! value into its base; space aggregation uses them to merge instances. Pure arithmetic.

use super::{ExpBuckets, ExpHistogram, Histogram, Number, Summary};

/// The value a stream reports: a number or a histogram-like total.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamValue {
    Number(Number),
    Histogram(Histogram),
    ExpHistogram(ExpHistogram),
    Summary(Summary),
}

/// A [`StreamValue`] borrowed where it is kept, for aggregation to read without a copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    Number(Number),
    Histogram(&'a Histogram),
    ExpHistogram(&'a ExpHistogram),
    Summary(&'a Summary),
}

impl StreamValue {
    /// The value borrowed.
    pub fn as_value_ref(&self) -> ValueRef<'_> {
        match self {
            StreamValue::Number(value) => ValueRef::Number(*value),
            StreamValue::Histogram(value) => ValueRef::Histogram(value),
            StreamValue::ExpHistogram(value) => ValueRef::ExpHistogram(value),
            StreamValue::Summary(value) => ValueRef::Summary(value),
        }
    }

    /// Adds another value of the same shape: numbers add, histograms merge. Values of
    /// different shapes, or explicit histograms with different bounds, are left as they are
    /// and `false` is returned.
    pub fn add(&mut self, other: &StreamValue) -> bool {
        match (self, other) {
            (StreamValue::Number(total), StreamValue::Number(value)) => {
                *total = total.plus(*value);
                true
            }
            (StreamValue::Histogram(total), StreamValue::Histogram(value)) => {
                total.add(value).is_ok()
            }
            (StreamValue::ExpHistogram(total), StreamValue::ExpHistogram(value)) => {
                total.add(value);
                true
            }
            (StreamValue::Summary(total), StreamValue::Summary(value)) => {
                total.add(value);
                true
            }
            _ => false,
        }
    }
}

/// Two explicit-bucket histograms with different bounds cannot be added bucket-wise.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("explicit bounds differ: {left:?} vs {right:?}")]
pub struct BoundsMismatch {
    pub left: Vec<f64>,
    pub right: Vec<f64>,
}

/// Widest bucket range an exponential histogram may reach by merging. Hostile offsets far
/// apart would otherwise allocate billions of buckets; past this span the merge moves to a
/// coarser scale, which is what the SDKs do when their `MaxSize` (160) is reached.
const MAX_EXP_SPAN: i64 = 4096;

impl ExpHistogram {
    /// The scales OTLP allows: at -10 every finite double fits in a handful of buckets, and
    /// 20 is the SDKs' `MaxScale`. Points outside are refused, and merges never go below.
    pub const SCALES: std::ops::RangeInclusive<i32> = -10..=20;
}

fn add_optional(
    left: Option<f64>,
    right: Option<f64>,
    combine: fn(f64, f64) -> f64,
) -> Option<f64> {
    match (left, right) {
        (Some(left), Some(right)) => Some(combine(left, right)),
        _ => None,
    }
}

impl Histogram {
    /// Whether `other` can be added to this histogram.
    ///
    /// # Errors
    /// [`BoundsMismatch`] when the bucket bounds differ.
    pub fn check_bounds(&self, other: &Histogram) -> Result<(), BoundsMismatch> {
        if self.bounds == other.bounds {
            Ok(())
        } else {
            Err(BoundsMismatch {
                left: self.bounds.clone(),
                right: other.bounds.clone(),
            })
        }
    }

    /// Adds `other` bucket-wise: counts and sums add, min of mins, max of maxes.
    /// A sum, min or max missing on either side is missing in the result.
    ///
    /// # Errors
    /// [`BoundsMismatch`] when the bucket bounds differ; nothing is changed then.
    pub fn add(&mut self, other: &Histogram) -> Result<(), BoundsMismatch> {
        self.check_bounds(other)?;
        self.count = self.count.saturating_add(other.count);
        for (total, count) in self.bucket_counts.iter_mut().zip(&other.bucket_counts) {
            *total = total.saturating_add(*count);
        }
        self.sum = add_optional(self.sum, other.sum, |a, b| a + b);
        self.min = add_optional(self.min, other.min, f64::min);
        self.max = add_optional(self.max, other.max, f64::max);
        Ok(())
    }
}

impl ExpBuckets {
    fn end(&self) -> i64 {
        i64::from(self.offset) + self.counts.len() as i64
    }

    /// The same counts at a scale `by` steps coarser: bucket `i` becomes bucket `i >> by`.
    fn downscaled(&self, by: u32) -> ExpBuckets {
        if by == 0 || self.counts.is_empty() {
            return self.clone();
        }
        let by = by.min(62);
        let first = i64::from(self.offset) >> by;
        let last = (self.end() - 1) >> by;
        let mut counts = vec![0u64; (last - first + 1) as usize];
        for (position, count) in self.counts.iter().enumerate() {
            let index = ((i64::from(self.offset) + position as i64) >> by) - first;
            counts[index as usize] = counts[index as usize].saturating_add(*count);
        }
        ExpBuckets {
            // Shifting an i32 right never leaves the i32 range.
            offset: first as i32,
            counts,
        }
    }

    /// Adds `other`, which must be at the same scale.
    fn add(&mut self, other: &ExpBuckets) {
        if other.counts.is_empty() {
            return;
        }
        if self.counts.is_empty() {
            *self = other.clone();
            return;
        }
        let first = self.offset.min(other.offset);
        let end = self.end().max(other.end());
        let mut counts = vec![0u64; (end - i64::from(first)) as usize];
        for side in [&*self, other] {
            let shift = (side.offset - first) as usize;
            for (position, count) in side.counts.iter().enumerate() {
                counts[shift + position] = counts[shift + position].saturating_add(*count);
            }
        }
        *self = ExpBuckets {
            offset: first,
            counts,
        };
    }
}

/// Span of the merged bucket range at a scale `by` steps coarser than the inputs.
fn merged_span(sides: [&ExpBuckets; 2], by: [u32; 2]) -> i64 {
    let mut first = i64::MAX;
    let mut end = i64::MIN;
    for (side, by) in sides.iter().zip(by) {
        if side.counts.is_empty() {
            continue;
        }
        first = first.min(i64::from(side.offset) >> by);
        end = end.max(((side.end() - 1) >> by) + 1);
    }
    if first > end { 0 } else { end - first }
}

impl ExpHistogram {
    /// Adds `other`: both are brought to the coarser scale (further if the merged range would
    /// be wider than a bounded number of buckets), then buckets, zero counts, counts and sums
    /// add. The zero threshold becomes the larger of the two.
    pub fn add(&mut self, other: &ExpHistogram) {
        let mut scale = self.scale.min(other.scale);
        loop {
            let by = [(self.scale - scale) as u32, (other.scale - scale) as u32];
            let too_wide = merged_span([&self.positive, &other.positive], by) > MAX_EXP_SPAN
                || merged_span([&self.negative, &other.negative], by) > MAX_EXP_SPAN;
            if !too_wide || scale <= *ExpHistogram::SCALES.start() {
                break;
            }
            scale -= 1;
        }
        let own_by = (self.scale - scale) as u32;
        let other_by = (other.scale - scale) as u32;
        self.positive = self.positive.downscaled(own_by);
        self.negative = self.negative.downscaled(own_by);
        self.positive.add(&other.positive.downscaled(other_by));
        self.negative.add(&other.negative.downscaled(other_by));
        self.scale = scale;
        self.count = self.count.saturating_add(other.count);
        self.zero_count = self.zero_count.saturating_add(other.zero_count);
        self.zero_threshold = self.zero_threshold.max(other.zero_threshold);
        self.sum = add_optional(self.sum, other.sum, |a, b| a + b);
        self.min = add_optional(self.min, other.min, f64::min);
        self.max = add_optional(self.max, other.max, f64::max);
    }
}

impl Summary {
    /// Adds counts and sums. Quantiles cannot be merged: the result keeps `other`'s, the
    /// newer ones when folding a reset stream.
    pub fn add(&mut self, other: &Summary) {
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.quantiles = other.quantiles.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(bounds: &[f64], counts: &[u64], sum: f64, min: f64, max: f64) -> Histogram {
        Histogram {
            count: counts.iter().sum(),
            sum: Some(sum),
            min: Some(min),
            max: Some(max),
            bounds: bounds.to_vec(),
            bucket_counts: counts.to_vec(),
        }
    }

    #[test]
    fn histograms_add_bucket_wise() {
        let mut left = histogram(&[1.0, 5.0], &[1, 2, 3], 20.0, 0.5, 9.0);
        left.add(&histogram(&[1.0, 5.0], &[4, 0, 1], 7.0, 0.1, 6.0))
            .expect("same bounds");
        assert_eq!(left, histogram(&[1.0, 5.0], &[5, 2, 4], 27.0, 0.1, 9.0));
    }

    #[test]
    fn histograms_with_other_bounds_do_not_add() {
        let mut left = histogram(&[1.0], &[1, 1], 2.0, 0.0, 2.0);
        let before = left.clone();
        assert!(
            left.add(&histogram(&[2.0], &[1, 1], 2.0, 0.0, 2.0))
                .is_err()
        );
        assert_eq!(left, before);
    }

    fn exp(scale: i32, offset: i32, counts: &[u64], zero: u64) -> ExpHistogram {
        ExpHistogram {
            count: counts.iter().sum::<u64>() + zero,
            sum: Some(1.0),
            min: None,
            max: None,
            scale,
            zero_count: zero,
            zero_threshold: 0.0,
            positive: ExpBuckets {
                offset,
                counts: counts.to_vec(),
            },
            negative: ExpBuckets::default(),
        }
    }

    #[track_caller]
    fn check_downscale(offset: i32, counts: &[u64], by: u32, expected: (i32, &[u64])) {
        let buckets = ExpBuckets {
            offset,
            counts: counts.to_vec(),
        };
        let down = buckets.downscaled(by);
        assert_eq!((down.offset, down.counts.as_slice()), expected);
    }

    #[test]
    fn downscale_floors_indices() {
        check_downscale(0, &[1, 2, 3, 4], 1, (0, &[3, 7]));
        check_downscale(1, &[1, 2, 3, 4], 1, (0, &[1, 5, 4]));
        check_downscale(-3, &[1, 1, 1, 1], 1, (-2, &[1, 2, 1]));
        check_downscale(-3, &[1, 1, 1, 1], 2, (-1, &[3, 1]));
        check_downscale(5, &[1], 0, (5, &[1]));
    }

    #[test]
    fn exponential_histograms_merge_at_the_coarser_scale() {
        // Scale 3 buckets 0..8 (values (1, 2^(8/8)] = (1, 2]) become scale-1 buckets 0 and 1.
        let mut fine = exp(3, 0, &[1, 1, 1, 1, 1, 1, 1, 1], 1);
        let coarse = exp(1, 0, &[10, 20], 2);
        fine.add(&coarse);
        assert_eq!(fine.scale, 1);
        assert_eq!(fine.positive.offset, 0);
        assert_eq!(fine.positive.counts, vec![14, 24]);
        assert_eq!(fine.zero_count, 3);
        assert_eq!(fine.count, 41);
        assert_eq!(fine.sum, Some(2.0));
    }

    #[test]
    fn hostile_offsets_stay_bounded() {
        let mut low = exp(20, i32::MIN + 1, &[1], 0);
        low.add(&exp(20, i32::MAX - 1, &[1], 0));
        assert!(low.positive.counts.len() as i64 <= MAX_EXP_SPAN);
        assert_eq!(low.positive.counts.iter().sum::<u64>(), 2);
        assert!(low.scale < 20);
    }

    #[test]
    fn summaries_add_count_and_sum_and_keep_newer_quantiles() {
        let mut base = Summary {
            count: 3,
            sum: 6.0,
            quantiles: vec![(0.5, 1.0)],
        };
        base.add(&Summary {
            count: 2,
            sum: 1.0,
            quantiles: vec![(0.5, 0.2)],
        });
        assert_eq!(
            base,
            Summary {
                count: 5,
                sum: 7.0,
                quantiles: vec![(0.5, 0.2)]
            }
        );
    }
}
