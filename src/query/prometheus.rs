//! `GET /metrics`: the aggregated series in the Prometheus text format 0.0.4, plus fanin's own
//! `fanin_*` metrics.
//!
//! Each metric is aggregated with its default (`aggregation.rules`, else `sum`) across all
//! its attributes except the instance attributes, exactly as `/api/v1/query?metric=NAME`
//! would answer. Names and labels follow the OpenTelemetry-to-Prometheus compatibility rules
//! (the OpenTelemetry specification's "Prometheus and OpenMetrics Compatibility"):
//!
//! - the name's characters outside `[a-zA-Z0-9_:]` become `_`, runs of `_` collapse, a
//!   leading digit gets a `_` in front;
//! - the unit becomes a suffix (`s` → `_seconds`, `By` → `_bytes`, `{request}` → nothing,
//!   `m/s` → `_meters_per_second`) unless the name already ends with it; `1` adds nothing;
//! - a counter gets `_total`; histograms `_bucket`/`_sum`/`_count`; summaries `_sum`/`_count`;
//! - label names get the same treatment (a leading digit gets `key_`); attributes that
//!   collide after it are joined with `;` in the order of their original keys.
//!
//! Scope labels (`otel_scope_*`) and `target_info` are not emitted: an aggregate spans
//! instances and scopes, so neither has one value. A metric whose Prometheus name would
//! repeat one already written is left out rather than making the whole page invalid.
//! Exponential histograms, which 0.0.4 cannot carry, become classic buckets at their own
//! bucket boundaries.

use std::collections::{HashMap, HashSet};
use std::fmt::Write;
use std::sync::Arc;

use crate::aggregate::{Agg, Aggregated, Shape};
use crate::config::AggregationRule;
use crate::model::{Attributes, ExpHistogram, Histogram, MetricId, Total};
use crate::store::{RetiredView, Store, StreamView};

use super::answer::{Selection, build, default_agg};
use super::json::attr_text;

/// The content type Prometheus expects for format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric in the store and fanin's own.
pub fn render(store: &Store, rules: &[AggregationRule]) -> String {
    let mut page = Page::default();
    // One snapshot of every stream, indexed by metric name (each instance's streams stay
    // together, as `build` needs).
    let all_streams = store.all_streams();
    let unreliable = all_streams
        .iter()
        .filter(|view| view.state.unreliable.is_some())
        .count();
    self_metrics(&mut page, store, unreliable);

    let mut streams: HashMap<&str, Vec<&StreamView>, foldhash::fast::RandomState> =
        HashMap::default();
    for view in &all_streams {
        streams
            .entry(view.key.metric.name.as_str())
            .or_default()
            .push(view);
    }
    let mut retired: HashMap<String, Vec<RetiredView>> = HashMap::new();
    for total in store.all_retired_totals() {
        retired
            .entry(total.metric.name.clone())
            .or_default()
            .push(total);
    }
    let mut identities = store.metric_identities();
    identities.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (metric, description) in identities {
        let name = &metric.name;
        let agg = default_agg(rules, name);
        let answer = build(
            Arc::clone(&metric),
            agg,
            streams.get(name.as_str()).into_iter().flatten().copied(),
            retired.get(name).map_or(&[][..], Vec::as_slice),
            store.instance_attributes(),
            Selection::default(),
        );
        // A rule may ask for max of a histogram; such a metric has no value to expose.
        let Ok(answer) = answer else {
            continue;
        };
        let help = if description.is_empty() {
            format!("OpenTelemetry metric {name}")
        } else {
            description.to_string()
        };
        let family = family_of(&answer.metric, agg, &help, &answer.groups);
        page.add(family);
    }
    page.text
}

/// One metric family: HELP, TYPE and its samples.
struct Family {
    name: String,
    kind: &'static str,
    help: String,
    samples: Vec<Sample>,
}

/// One sample line: `name{labels} value`.
struct Sample {
    name: String,
    /// Sorted by label name.
    labels: Vec<(String, String)>,
    /// Integers are written exactly, however large.
    value: Total,
}

impl Sample {
    fn new(name: impl Into<String>, labels: Vec<(String, String)>, value: Total) -> Sample {
        Sample {
            name: name.into(),
            labels,
            value,
        }
    }
}

#[derive(Default)]
struct Page {
    text: String,
    /// Every sample name written so far, to keep the page valid.
    used: HashSet<String>,
}

impl Page {
    fn add(&mut self, family: Family) {
        let names: HashSet<&str> = family
            .samples
            .iter()
            .map(|sample| sample.name.as_str())
            .collect();
        if self.used.contains(&family.name) || names.iter().any(|name| self.used.contains(*name)) {
            tracing::debug!(name = %family.name, "Metric left out of /metrics: its Prometheus name is taken");
            return;
        }
        self.used.insert(family.name.clone());
        self.used.extend(names.iter().map(|name| name.to_string()));
        let _ = writeln!(
            self.text,
            "# HELP {} {}",
            family.name,
            escape_help(&family.help)
        );
        let _ = writeln!(self.text, "# TYPE {} {}", family.name, family.kind);
        for sample in &family.samples {
            self.text.push_str(&sample.name);
            if !sample.labels.is_empty() {
                self.text.push('{');
                for (index, (label, label_value)) in sample.labels.iter().enumerate() {
                    if index > 0 {
                        self.text.push(',');
                    }
                    let _ = write!(self.text, "{label}=\"{}\"", escape_label_value(label_value));
                }
                self.text.push('}');
            }
            let _ = match sample.value {
                Total::Int(value) => writeln!(self.text, " {value}"),
                Total::Double(value) => writeln!(self.text, " {}", format_value(value)),
            };
        }
    }
}

fn family_of(
    metric: &MetricId,
    agg: Agg,
    help: &str,
    groups: &[crate::aggregate::Group],
) -> Family {
    let shape = Shape::of(metric);
    let counter = shape == Shape::Counter && agg == Agg::Sum;
    let base = metric_name(metric);
    let (name, kind) = match shape {
        _ if counter => (with_suffix(&base, "total"), "counter"),
        Shape::Counter | Shape::Current => (base, "gauge"),
        Shape::Histogram | Shape::ExpHistogram => (base, "histogram"),
        Shape::Summary => (base, "summary"),
    };
    let mut samples = Vec::new();
    for group in groups {
        let labels = labels(&group.attributes);
        match &group.value {
            Aggregated::Number(value) => samples.push(Sample::new(name.clone(), labels, *value)),
            Aggregated::Histogram {
                histogram,
                bounds_differ,
            } => {
                let buckets = if *bounds_differ {
                    Vec::new()
                } else {
                    explicit_buckets(histogram)
                };
                histogram_samples(
                    &name,
                    &labels,
                    &buckets,
                    histogram.count,
                    histogram.sum,
                    &mut samples,
                );
            }
            Aggregated::ExpHistogram(histogram) => {
                let buckets = exponential_buckets(histogram);
                histogram_samples(
                    &name,
                    &labels,
                    &buckets,
                    histogram.count,
                    histogram.sum,
                    &mut samples,
                );
            }
            Aggregated::Summary { count, sum } => {
                samples.push(Sample::new(
                    format!("{name}_sum"),
                    labels.clone(),
                    Total::Double(*sum),
                ));
                samples.push(Sample::new(
                    format!("{name}_count"),
                    labels,
                    count_of(*count),
                ));
            }
        }
    }
    Family {
        name,
        kind,
        help: help.to_string(),
        samples,
    }
}

/// `_bucket` lines with cumulative counts (the `+Inf` one always), then `_sum` and `_count`.
fn histogram_samples(
    name: &str,
    labels: &[(String, String)],
    buckets: &[(f64, u64)],
    count: u64,
    sum: Option<f64>,
    samples: &mut Vec<Sample>,
) {
    let bucket_name = format!("{name}_bucket");
    let with_le = |le: String| {
        let mut labels = labels.to_vec();
        labels.push(("le".to_string(), le));
        labels.sort();
        labels
    };
    let mut running = 0u64;
    for (bound, bucket_count) in buckets {
        running = running.saturating_add(*bucket_count);
        samples.push(Sample::new(
            bucket_name.clone(),
            with_le(format_value(*bound)),
            count_of(running),
        ));
    }
    samples.push(Sample::new(
        bucket_name,
        with_le("+Inf".to_string()),
        count_of(count),
    ));
    if let Some(sum) = sum {
        samples.push(Sample::new(
            format!("{name}_sum"),
            labels.to_vec(),
            Total::Double(sum),
        ));
    }
    samples.push(Sample::new(
        format!("{name}_count"),
        labels.to_vec(),
        count_of(count),
    ));
}

/// `(upper bound, count)` of every finite bucket.
fn explicit_buckets(histogram: &Histogram) -> Vec<(f64, u64)> {
    histogram
        .bounds
        .iter()
        .zip(&histogram.bucket_counts)
        .map(|(bound, count)| (*bound, *count))
        .collect()
}

/// Classic buckets at an exponential histogram's own boundaries: negative buckets (upper
/// bound `-base^i`), the zero bucket (`zero_threshold`), positive ones (`base^(i+1)`).
/// Bounds that round to the same double are merged so `le` strictly increases.
fn exponential_buckets(histogram: &ExpHistogram) -> Vec<(f64, u64)> {
    let base_exponent = 2f64.powi(-histogram.scale);
    let bound = |index: i64| 2f64.powf(index as f64 * base_exponent);
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    let negative = &histogram.negative;
    for (position, count) in negative.counts.iter().enumerate().rev() {
        let index = i64::from(negative.offset) + position as i64;
        buckets.push((-bound(index), *count));
    }
    buckets.push((histogram.zero_threshold, histogram.zero_count));
    let positive = &histogram.positive;
    for (position, count) in positive.counts.iter().enumerate() {
        let index = i64::from(positive.offset) + position as i64;
        buckets.push((bound(index + 1), *count));
    }
    let mut merged: Vec<(f64, u64)> = Vec::with_capacity(buckets.len());
    for (bound, count) in buckets {
        match merged.last_mut() {
            Some(last) if bound <= last.0 => last.1 = last.1.saturating_add(count),
            _ => merged.push((bound, count)),
        }
    }
    merged.retain(|(bound, _)| bound.is_finite());
    merged
}

/// Sanitised labels, sorted by name; attributes that collide after sanitising are joined
/// with `;` in the order of their original keys.
fn labels(attributes: &Attributes) -> Vec<(String, String)> {
    let mut joined: Vec<(String, String)> = Vec::new();
    for (key, value) in attributes.iter() {
        let name = label_name(key);
        let text = attr_text(value);
        match joined.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, existing)) => {
                existing.push(';');
                existing.push_str(&text);
            }
            None => joined.push((name, text)),
        }
    }
    joined.sort();
    joined
}

/// `[a-zA-Z0-9_:]` kept (`:` only in metric names), everything else `_`, runs collapsed.
fn sanitize(raw: &str, allow_colon: bool) -> String {
    let mut out = String::with_capacity(raw.len());
    for character in raw.chars() {
        let valid = character.is_ascii_alphanumeric()
            || character == '_'
            || (allow_colon && character == ':');
        let character = if valid { character } else { '_' };
        if character == '_' && out.ends_with('_') {
            continue;
        }
        out.push(character);
    }
    out
}

fn label_name(key: &str) -> String {
    let name = sanitize(key, false);
    if name.is_empty() {
        "key_".to_string()
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        format!("key_{name}")
    } else if name.starts_with('_') && !name.starts_with("__") {
        format!("key{name}")
    } else {
        name
    }
}

/// The Prometheus name of a metric, with its unit suffix but no type suffix.
fn metric_name(metric: &MetricId) -> String {
    let mut name = sanitize(&metric.name, true);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    match unit_word(&metric.unit) {
        Some(unit) => with_suffix(&name, &unit),
        None => name,
    }
}

/// `name_suffix`, unless `name` already ends with that suffix.
fn with_suffix(name: &str, suffix: &str) -> String {
    if name == suffix || name.ends_with(&format!("_{suffix}")) {
        name.to_string()
    } else if name.ends_with('_') {
        format!("{name}{suffix}")
    } else {
        format!("{name}_{suffix}")
    }
}

/// The unit as a name suffix: UCUM units as words, annotations in braces dropped, `a/b` as
/// `a_per_b`, `1` as nothing.
fn unit_word(unit: &str) -> Option<String> {
    let mut plain = String::new();
    let mut depth = 0usize;
    for character in unit.chars() {
        match character {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ if depth == 0 => plain.push(character),
            _ => {}
        }
    }
    let plain = plain.trim();
    if plain.is_empty() || plain == "1" {
        return None;
    }
    let word = match plain.split_once('/') {
        Some((numerator, denominator)) => {
            let per = per_unit_word(denominator.trim());
            match unit_name(numerator.trim()) {
                Some(numerator) => format!("{numerator}_per_{per}"),
                None => format!("per_{per}"),
            }
        }
        None => unit_name(plain)?,
    };
    let word = sanitize(&word, false);
    (!word.trim_matches('_').is_empty()).then_some(word)
}

fn unit_name(unit: &str) -> Option<String> {
    let word = match unit {
        "" | "1" => return None,
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tebibytes",
        "kBy" | "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        other => other,
    };
    Some(word.to_string())
}

fn per_unit_word(unit: &str) -> String {
    match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => return unit_name(other).unwrap_or_default(),
    }
    .to_string()
}

fn count_of(count: u64) -> Total {
    Total::Int(i128::from(count))
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else {
        format!("{value}")
    }
}

fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

fn escape_label_value(text: &str) -> String {
    text.replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// fanin's own counters and gauges.
fn self_metrics(page: &mut Page, store: &Store, unreliable_streams: usize) {
    type Labels = Vec<(String, String)>;
    let stats = store.stats().snapshot();
    let family = |name: &str, kind: &'static str, help: &str, samples: Vec<(Labels, u64)>| Family {
        name: name.to_string(),
        kind,
        help: help.to_string(),
        samples: samples
            .into_iter()
            .map(|(labels, value)| Sample::new(name, labels, count_of(value)))
            .collect(),
    };
    let by = |label: &str, pairs: &[(&'static str, u64)]| -> Vec<(Labels, u64)> {
        pairs
            .iter()
            .map(|(value, count)| (vec![(label.to_string(), value.to_string())], *count))
            .collect()
    };
    let single = |value: usize| vec![(Vec::new(), value as u64)];
    let (live, retired) = store.instance_counts();
    let state =
        |state: &str, count: usize| (vec![("state".to_string(), state.to_string())], count as u64);
    let families = [
        family(
            "fanin_requests_total",
            "counter",
            "Export requests received, by transport.",
            by("transport", &stats.requests),
        ),
        family(
            "fanin_request_errors_total",
            "counter",
            "Export requests refused as a whole, by reason.",
            by("reason", &stats.request_errors),
        ),
        family(
            "fanin_points_accepted_total",
            "counter",
            "Data points stored.",
            vec![(Vec::new(), stats.points_accepted)],
        ),
        family(
            "fanin_points_rejected_total",
            "counter",
            "Data points refused and reported in partial_success, by reason.",
            by("reason", &stats.points_rejected),
        ),
        family(
            "fanin_points_dropped_total",
            "counter",
            "Duplicate, out-of-order or overlapping data points dropped, by reason.",
            by("reason", &stats.points_dropped),
        ),
        family(
            "fanin_streams",
            "gauge",
            "Streams stored.",
            single(store.stream_count()),
        ),
        family(
            "fanin_instances",
            "gauge",
            "Instances stored, by state.",
            vec![state("live", live), state("retired", retired)],
        ),
        family(
            "fanin_instances_retired_total",
            "counter",
            "Instances retired, by TTL or because their process was gone.",
            vec![(Vec::new(), stats.instances_retired)],
        ),
        family(
            "fanin_collisions_total",
            "counter",
            "Streams found written by more than one process; see /api/v1/collisions.",
            vec![(Vec::new(), stats.collisions)],
        ),
        family(
            "fanin_unreliable_streams",
            "gauge",
            "Streams whose writers fanin cannot tell apart, so their totals are unreliable; see the notes of /api/v1/query and /api/v1/collisions.",
            single(unreliable_streams),
        ),
        family(
            "fanin_type_conflicts_total",
            "counter",
            "Metric names seen with a second kind, unit or monotonicity.",
            vec![(Vec::new(), stats.type_conflicts)],
        ),
    ];
    for family in families {
        page.add(family);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, ExpBuckets, Kind, Temporality};

    fn metric(name: &str, kind: Kind, unit: &str, monotonic: bool) -> MetricId {
        MetricId {
            name: name.into(),
            kind,
            unit: unit.into(),
            monotonic,
            temporality: Some(Temporality::Cumulative),
        }
    }

    #[track_caller]
    fn check_name(name: &str, kind: Kind, unit: &str, monotonic: bool, expected: &str) {
        let metric = metric(name, kind, unit, monotonic);
        let family = family_of(&metric, Agg::Sum, "help", &[]);
        assert_eq!(family.name, expected);
    }

    #[test]
    fn names_follow_the_compatibility_rules() {
        check_name(
            "http.server.request.duration",
            Kind::Histogram,
            "s",
            false,
            "http_server_request_duration_seconds",
        );
        check_name("foo.bar", Kind::Sum, "By", true, "foo_bar_bytes_total");
        check_name(
            "http.requests",
            Kind::Sum,
            "{request}",
            true,
            "http_requests_total",
        );
        check_name("requests_total", Kind::Sum, "1", true, "requests_total");
        check_name(
            "speed",
            Kind::Gauge,
            "m/s",
            false,
            "speed_meters_per_second",
        );
        check_name("rate", Kind::Gauge, "1/s", false, "rate_per_second");
        check_name(
            "latency_seconds",
            Kind::Gauge,
            "s",
            false,
            "latency_seconds",
        );
        check_name("2xx..count", Kind::Gauge, "", false, "_2xx_count");
        check_name("inflight", Kind::Sum, "", false, "inflight");
        check_name("temp", Kind::Gauge, "Cel", false, "temp_celsius");
    }

    #[test]
    fn labels_are_sanitised_and_colliding_ones_joined() {
        let attributes = Attributes::new(vec![
            ("http.route".into(), AttrValue::Str("/a".into())),
            ("http_route".into(), AttrValue::Str("/b".into())),
            ("2nd".into(), AttrValue::Int(2)),
            ("_private".into(), AttrValue::Bool(true)),
        ]);
        assert_eq!(
            labels(&attributes),
            vec![
                ("http_route".to_string(), "/a;/b".to_string()),
                ("key_2nd".to_string(), "2".to_string()),
                ("key_private".to_string(), "true".to_string()),
            ]
        );
    }

    #[test]
    fn values_and_escapes() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(escape_label_value("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
        assert_eq!(escape_help("line\nnext \\"), r"line\nnext \\");
    }

    #[test]
    fn exponential_buckets_increase_and_keep_every_count() {
        let histogram = ExpHistogram {
            count: 10,
            sum: Some(1.0),
            min: None,
            max: None,
            scale: 0,
            zero_count: 1,
            zero_threshold: 0.0,
            positive: ExpBuckets {
                offset: 0,
                counts: vec![2, 3],
            },
            negative: ExpBuckets {
                offset: 1,
                counts: vec![4],
            },
        };
        assert_eq!(
            exponential_buckets(&histogram),
            vec![(-2.0, 4), (0.0, 1), (2.0, 2), (4.0, 3)]
        );
    }
}
