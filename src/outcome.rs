//! What happened to the points of one export request.
//!
//! A point is *accepted* (stored), *rejected* (invalid or refused: the sender is told through
//! `partial_success` and should fix something), or *dropped* (a duplicate, out-of-order or
//! overlapping point: counted, never applied twice, and not reported back, because a client
//! retrying a request it already sent is normal behaviour and needs no fix).

/// Why a point was refused. Reported in `partial_success` and counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// `time_unix_nano` is 0, which OTLP says consumers should reject.
    TimeZero,
    /// A number point with neither `as_double` nor `as_int`, and no NO_RECORDED_VALUE flag.
    NoValue,
    /// A sum or histogram whose `aggregation_temporality` is UNSPECIFIED or unknown.
    BadTemporality,
    /// A metric without a name.
    EmptyName,
    /// Bucket counts and bounds that do not fit together.
    InvalidHistogram,
    /// Bucket counts, scale or zero count that do not fit together.
    InvalidExponentialHistogram,
    /// The explicit bucket bounds differ from those the stream already has.
    BoundsChanged,
    /// The point would create a stream past `limits.max_series`.
    SeriesLimit,
    /// The point would create a stream past `limits.max_series_per_instance`.
    InstanceSeriesLimit,
    /// The point would create an instance past `limits.max_instances`.
    InstanceLimit,
    /// The point's, its scope's or its resource's attributes break `limits.max_attributes`
    /// or the key and value sizes.
    AttributeLimit,
    /// A histogram with more bounds or buckets than `limits.max_histogram_bounds` or
    /// `limits.max_exponential_buckets`.
    HistogramLimit,
    /// The point would give its metric name a type past `limits.max_type_conflicts`.
    TypeConflictLimit,
    /// The point is evidence that another process writes the stream (`collisions.policy:
    /// reject`).
    Collision,
    /// Over the unix socket, the resource's `process.pid` is not the pid of the process
    /// that connected (`receivers.otlp.unix.verify_pid`).
    PidMismatch,
}

impl RejectReason {
    pub const ALL: [RejectReason; 15] = [
        RejectReason::TimeZero,
        RejectReason::NoValue,
        RejectReason::BadTemporality,
        RejectReason::EmptyName,
        RejectReason::InvalidHistogram,
        RejectReason::InvalidExponentialHistogram,
        RejectReason::BoundsChanged,
        RejectReason::SeriesLimit,
        RejectReason::InstanceSeriesLimit,
        RejectReason::InstanceLimit,
        RejectReason::AttributeLimit,
        RejectReason::HistogramLimit,
        RejectReason::TypeConflictLimit,
        RejectReason::Collision,
        RejectReason::PidMismatch,
    ];

    /// The label used in counters and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TimeZero => "time_zero",
            RejectReason::NoValue => "no_value",
            RejectReason::BadTemporality => "bad_temporality",
            RejectReason::EmptyName => "empty_name",
            RejectReason::InvalidHistogram => "invalid_histogram",
            RejectReason::InvalidExponentialHistogram => "invalid_exponential_histogram",
            RejectReason::BoundsChanged => "bounds_changed",
            RejectReason::SeriesLimit => "series_limit",
            RejectReason::InstanceSeriesLimit => "instance_series_limit",
            RejectReason::InstanceLimit => "instance_limit",
            RejectReason::AttributeLimit => "attribute_limit",
            RejectReason::HistogramLimit => "histogram_limit",
            RejectReason::TypeConflictLimit => "type_conflict_limit",
            RejectReason::Collision => "collision",
            RejectReason::PidMismatch => "pid_mismatch",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a valid point was not applied. Counted, not reported to the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Same timestamp as the last accepted point of the stream.
    Duplicate,
    /// Older than the last accepted point of the stream.
    OutOfOrder,
    /// A delta point whose interval overlaps the previous one.
    OverlappingDelta,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::Duplicate,
        DropReason::OutOfOrder,
        DropReason::OverlappingDelta,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Duplicate => "duplicate",
            DropReason::OutOfOrder => "out_of_order",
            DropReason::OverlappingDelta => "overlapping_delta",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How many rejection messages one response carries at most; the counts are always complete.
const MAX_EXAMPLES: usize = 3;

/// The tally for one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub accepted: u64,
    rejected: [u64; RejectReason::ALL.len()],
    dropped: [u64; DropReason::ALL.len()],
    /// The first few rejections, described for the sender.
    examples: Vec<String>,
    /// Things worth telling the sender that refused no point (e.g. a metric with no data).
    warnings: Vec<String>,
}

impl Outcome {
    /// Records `count` points refused for `reason`; `detail` says which and why.
    pub fn reject(&mut self, reason: RejectReason, count: u64, detail: impl FnOnce() -> String) {
        if count == 0 {
            return;
        }
        self.rejected[reason.index()] += count;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(detail());
        }
    }

    pub fn drop_point(&mut self, reason: DropReason) {
        self.dropped[reason.index()] += 1;
    }

    pub fn warn(&mut self, warning: impl FnOnce() -> String) {
        if self.warnings.len() < MAX_EXAMPLES {
            self.warnings.push(warning());
        }
    }

    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected[reason.index()]
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()]
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    /// Adds another tally into this one (used to combine conversion and storage).
    pub fn merge(&mut self, other: Outcome) {
        self.accepted += other.accepted;
        for (total, count) in self.rejected.iter_mut().zip(other.rejected) {
            *total += count;
        }
        for (total, count) in self.dropped.iter_mut().zip(other.dropped) {
            *total += count;
        }
        for example in other.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(example);
            }
        }
        for warning in other.warnings {
            if self.warnings.len() < MAX_EXAMPLES {
                self.warnings.push(warning);
            }
        }
    }

    /// The `partial_success` to send, if any: `(rejected_data_points, error_message)`.
    /// A fully accepted request with warnings gets `(0, message)`, as OTLP allows.
    pub fn partial_success(&self) -> Option<(i64, String)> {
        let rejected = self.rejected_total();
        if rejected == 0 && self.warnings.is_empty() {
            return None;
        }
        let mut parts = Vec::new();
        if rejected > 0 {
            let by_reason: Vec<String> = RejectReason::ALL
                .iter()
                .filter(|reason| self.rejected(**reason) > 0)
                .map(|reason| format!("{} {}", self.rejected(*reason), reason.as_str()))
                .collect();
            parts.push(format!(
                "fanin rejected {rejected} data point(s) ({}): {}",
                by_reason.join(", "),
                self.examples.join("; ")
            ));
        }
        if !self.warnings.is_empty() {
            parts.push(format!("warning: {}", self.warnings.join("; ")));
        }
        Some((
            i64::try_from(rejected).unwrap_or(i64::MAX),
            parts.join(". "),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_outcome_has_no_partial_success() {
        let outcome = Outcome {
            accepted: 3,
            ..Outcome::default()
        };
        assert_eq!(outcome.partial_success(), None);
    }

    #[test]
    fn drops_are_not_reported_to_the_sender() {
        let mut outcome = Outcome::default();
        outcome.drop_point(DropReason::Duplicate);
        assert_eq!(outcome.partial_success(), None);
        assert_eq!(outcome.dropped_total(), 1);
    }

    #[test]
    fn rejections_are_counted_and_explained() {
        let mut outcome = Outcome::default();
        outcome.reject(RejectReason::TimeZero, 2, || "metric \"a\": time 0".into());
        outcome.reject(RejectReason::NoValue, 1, || "metric \"b\": no value".into());
        let (count, message) = outcome.partial_success().expect("partial success");
        assert_eq!(count, 3);
        assert!(message.contains("2 time_zero, 1 no_value"), "{message}");
        assert!(message.contains("metric \"a\": time 0"), "{message}");
    }

    #[test]
    fn examples_are_bounded_but_counts_complete() {
        let mut outcome = Outcome::default();
        for _ in 0..10 {
            outcome.reject(RejectReason::TimeZero, 1, || "x".into());
        }
        let (count, message) = outcome.partial_success().expect("partial success");
        assert_eq!(count, 10);
        assert_eq!(message.matches('x').count(), MAX_EXAMPLES);
    }

    #[test]
    fn warnings_alone_give_zero_rejected() {
        let mut outcome = Outcome::default();
        outcome.warn(|| "metric \"m\" has no data".into());
        let (count, message) = outcome.partial_success().expect("warning is sent");
        assert_eq!(count, 0);
        assert!(message.starts_with("warning:"), "{message}");
    }
}
