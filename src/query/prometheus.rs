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
//!
//! The page is written in chunks of about [`CHUNK`] bytes as it is rendered, never whole:
//! the answers come from [`Answers`], which keeps each metric's between scrapes and
//! aggregates again only the metrics that changed, a batch of names at a time (about
//! [`BATCH_GROUPS`] groups, or one metric if it alone has more); a group's labels are
//! written once however many bucket lines share them.

use std::collections::HashSet;
use std::fmt::Write;
use std::sync::Arc;

use crate::aggregate::{Agg, Aggregated, Group, Shape};
use crate::model::{Attributes, ExpHistogram, Histogram, MetricId, Total};
use crate::store::{ExporterSnapshot, MetricIdentity, Store};

use super::answer::Answer;
pub use super::answers::{Answers, BATCH_GROUPS};
use super::json::attr_text;

/// The content type Prometheus expects for format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// About how many bytes of the page are handed on at a time.
pub const CHUNK: usize = 64 * 1024;

/// Renders every metric in the store and fanin's own, whole.
pub fn render(store: &Store, answers: &Answers) -> String {
    let mut page = String::new();
    render_chunks(store, answers, &mut |chunk| {
        page.push_str(&chunk);
        true
    });
    page
}

/// Renders every metric in the store and fanin's own, handing `send` one chunk at a time;
/// when `send` answers `false` (the reader is gone) rendering stops.
pub fn render_chunks(store: &Store, answers: &Answers, send: &mut dyn FnMut(String) -> bool) {
    let mut out = Out::new(send);
    self_metrics(&mut out, store);
    answers.each(store, &mut |identity, answer| {
        let family = FamilyName::of(&answer.metric, answer.agg);
        if out.family(&family, &help(identity)) {
            write_groups(&mut out, &family, &answer.groups);
        }
        !out.closed
    });
    out.finish();
}

fn help(identity: &MetricIdentity) -> String {
    if identity.description.is_empty() {
        format!("OpenTelemetry metric {}", identity.metric.name)
    } else {
        identity.description.to_string()
    }
}

/// One metric's aggregated groups, as `/metrics` shows them; for the exporters, which send
/// the same series upstream.
pub struct Family {
    pub metric: Arc<MetricId>,
    pub description: String,
    pub agg: Agg,
    answer: Arc<Answer>,
}

impl Family {
    /// The aggregated groups, in the order `/metrics` writes them.
    pub fn groups(&self) -> &[Group] {
        &self.answer.groups
    }
}

/// Every metric's family, in name order, with what `/metrics` would know besides.
pub struct Families {
    families: Vec<Family>,
    /// The names fanin's own metrics take on `/metrics`: a family with one is left out.
    reserved: HashSet<String>,
    /// Resource attributes (instance attributes dropped) every instance has with the same
    /// value, e.g. `service.name` when one service runs here.
    shared_resource: Attributes,
}

impl Families {
    /// Every metric in the store, aggregated or kept ([`Answers::each`]).
    pub fn collect(store: &Store, answers: &Answers) -> Families {
        let mut reserved = HashSet::new();
        {
            let mut discard = |_: String| true;
            let mut out = Out::new(&mut discard);
            self_metrics(&mut out, store);
            std::mem::swap(&mut reserved, &mut out.used);
        }
        let shared_resource = shared_resource(store);
        let mut families = Vec::new();
        answers.each(store, &mut |identity, answer| {
            families.push(Family {
                metric: Arc::clone(&answer.metric),
                description: identity.description.to_string(),
                agg: answer.agg,
                answer: Arc::clone(answer),
            });
            true
        });
        Families {
            families,
            reserved,
            shared_resource,
        }
    }

    /// The families whose names `/metrics` does not leave out.
    pub fn iter(&self) -> impl Iterator<Item = &Family> {
        let mut used = self.reserved.clone();
        self.families
            .iter()
            .filter(move |family| FamilyName::of(&family.metric, family.agg).take(&mut used))
    }

    /// Resource attributes every instance shares.
    pub fn shared_resource(&self) -> &Attributes {
        &self.shared_resource
    }

    /// Series in all families (samples of histograms not counted apart).
    pub fn series(&self) -> usize {
        self.families
            .iter()
            .map(|family| family.groups().len())
            .sum()
    }

    /// Writes every family's samples as `/metrics` names them, leaving out a family whose
    /// name is taken, as `/metrics` does.
    pub fn write_to<S: SampleSink>(&self, sink: &mut S) {
        for family in self.iter() {
            let name = FamilyName::of(&family.metric, family.agg);
            write_groups(sink, &name, family.groups());
        }
    }
}

/// The resource attributes, instance attributes dropped, that every instance not yet
/// evicted has with the same value.
fn shared_resource(store: &Store) -> Attributes {
    let instances = store.instances();
    let mut resources = instances
        .iter()
        .filter(|instance| !instance.evicted)
        .map(|instance| store.instance_attributes().strip(&instance.attributes));
    let Some(first) = resources.next() else {
        return Attributes::default();
    };
    let rest: Vec<Attributes> = resources.collect();
    first.retain(|key| {
        let value = first.get(key);
        rest.iter().all(|resource| resource.get(key) == value)
    })
}

/// Where samples go: the `/metrics` page, or a remote-write request.
pub trait SampleSink {
    /// A group's labels as this sink keeps them, made once for all its samples.
    type Labels;
    /// The labels from sorted, sanitised `(name, value)` pairs.
    fn labels(&self, pairs: Vec<(String, String)>) -> Self::Labels;
    /// One sample, with `le` among its labels when given.
    fn sample(&mut self, name: &str, labels: &Self::Labels, le: Option<&str>, value: Total);
    /// Whether nothing more is wanted.
    fn closed(&self) -> bool {
        false
    }
}

/// Where the page is written: a buffer handed on whenever it holds [`CHUNK`] bytes.
struct Out<'s> {
    text: String,
    send: &'s mut dyn FnMut(String) -> bool,
    /// The reader is gone; nothing more is written.
    closed: bool,
    /// Every family and sample name written so far, to keep the page valid.
    used: HashSet<String>,
}

impl<'s> Out<'s> {
    fn new(send: &'s mut dyn FnMut(String) -> bool) -> Out<'s> {
        Out {
            text: String::with_capacity(CHUNK + CHUNK / 4),
            send,
            closed: false,
            used: HashSet::new(),
        }
    }

    /// Writes a family's HELP and TYPE lines, unless one of its sample names is taken: then
    /// the family is left out and `false` returned.
    fn family(&mut self, family: &FamilyName, help: &str) -> bool {
        if !family.take(&mut self.used) {
            return false;
        }
        let _ = writeln!(self.text, "# HELP {} {}", family.name, escape_help(help));
        let _ = writeln!(self.text, "# TYPE {} {}", family.name, family.kind);
        true
    }

    fn flush(&mut self) {
        if self.closed || self.text.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.text, String::with_capacity(CHUNK + CHUNK / 4));
        if !(self.send)(chunk) {
            self.closed = true;
        }
    }

    fn finish(mut self) {
        self.flush();
    }
}

impl SampleSink for Out<'_> {
    type Labels = Labels;

    fn labels(&self, pairs: Vec<(String, String)>) -> Labels {
        Labels::of(pairs)
    }

    fn closed(&self) -> bool {
        self.closed
    }

    /// Writes `name{labels} value`, with `le="…"` among the labels when given.
    fn sample(&mut self, name: &str, labels: &Labels, le: Option<&str>, value: Total) {
        self.text.push_str(name);
        match le {
            Some(le) => {
                let (before, after) = labels.text.split_at(labels.le_at);
                let before = before.trim_end_matches(',');
                self.text.push('{');
                if !before.is_empty() {
                    self.text.push_str(before);
                    self.text.push(',');
                }
                let _ = write!(self.text, "le=\"{le}\"");
                if !after.is_empty() {
                    self.text.push(',');
                    self.text.push_str(after);
                }
                self.text.push('}');
            }
            None if labels.text.is_empty() => {}
            None => {
                self.text.push('{');
                self.text.push_str(&labels.text);
                self.text.push('}');
            }
        }
        let _ = match value {
            Total::Int(value) => writeln!(self.text, " {value}"),
            Total::Double(value) => writeln!(self.text, " {}", format_value(value)),
        };
        if self.text.len() >= CHUNK {
            self.flush();
        }
    }
}

/// A family's Prometheus name and type.
struct FamilyName {
    name: String,
    kind: &'static str,
}

impl FamilyName {
    fn of(metric: &MetricId, agg: Agg) -> FamilyName {
        let shape = Shape::of(metric);
        let base = metric_name(metric);
        let (name, kind) = match shape {
            Shape::Counter if agg == Agg::Sum => (with_suffix(&base, "total"), "counter"),
            Shape::Counter | Shape::Current => (base, "gauge"),
            Shape::Histogram | Shape::ExpHistogram => (base, "histogram"),
            Shape::Summary => (base, "summary"),
        };
        FamilyName { name, kind }
    }

    /// Claims the family's names in `used`; `false` (and nothing claimed) when one of them
    /// is taken already.
    fn take(&self, used: &mut HashSet<String>) -> bool {
        let names = self.sample_names();
        if used.contains(&self.name) || names.iter().any(|name| used.contains(name)) {
            tracing::debug!(name = %self.name, "Metric left out: its Prometheus name is taken");
            return false;
        }
        used.insert(self.name.clone());
        used.extend(names);
        true
    }

    /// Every name the family's samples may have.
    fn sample_names(&self) -> Vec<String> {
        let name = &self.name;
        match self.kind {
            "histogram" => vec![
                format!("{name}_bucket"),
                format!("{name}_sum"),
                format!("{name}_count"),
            ],
            "summary" => vec![format!("{name}_sum"), format!("{name}_count")],
            _ => vec![name.clone()],
        }
    }
}

/// A family's samples, group by group.
fn write_groups<S: SampleSink>(out: &mut S, family: &FamilyName, groups: &[Group]) {
    let name = &family.name;
    let (bucket, sum, count) = (
        format!("{name}_bucket"),
        format!("{name}_sum"),
        format!("{name}_count"),
    );
    for group in groups {
        let labels = out.labels(labels(&group.attributes));
        match &group.value {
            Aggregated::Number(value) => out.sample(name, &labels, None, *value),
            Aggregated::Histogram {
                histogram,
                bounds_differ,
            } => {
                let buckets = if *bounds_differ {
                    Vec::new()
                } else {
                    explicit_buckets(histogram)
                };
                let totals = (histogram.count, histogram.sum);
                write_histogram(out, [&bucket, &sum, &count], &labels, &buckets, totals);
            }
            Aggregated::ExpHistogram(histogram) => {
                let buckets = exponential_buckets(histogram);
                let totals = (histogram.count, histogram.sum);
                write_histogram(out, [&bucket, &sum, &count], &labels, &buckets, totals);
            }
            Aggregated::Summary {
                count: total,
                sum: summed,
            } => {
                out.sample(&sum, &labels, None, Total::Double(*summed));
                out.sample(&count, &labels, None, count_of(*total));
            }
        }
        if out.closed() {
            return;
        }
    }
}

/// `_bucket` lines with cumulative counts (the `+Inf` one always), then `_sum` and `_count`.
fn write_histogram<S: SampleSink>(
    out: &mut S,
    [bucket, sum, count]: [&str; 3],
    labels: &S::Labels,
    buckets: &[(f64, u64)],
    (total, summed): (u64, Option<f64>),
) {
    let mut running = 0u64;
    for (bound, bucket_count) in buckets {
        running = running.saturating_add(*bucket_count);
        out.sample(
            bucket,
            labels,
            Some(&format_value(*bound)),
            count_of(running),
        );
    }
    out.sample(bucket, labels, Some("+Inf"), count_of(total));
    if let Some(summed) = summed {
        out.sample(sum, labels, None, Total::Double(summed));
    }
    out.sample(count, labels, None, count_of(total));
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

/// A group's labels, written once for all its samples: `name="value"` pairs sorted by name
/// and joined by `,`, and where among them an `le` label goes.
struct Labels {
    text: String,
    /// The byte offset in `text` of the first label whose name sorts after `le` (the length
    /// of `text` when none does).
    le_at: usize,
}

impl Labels {
    fn of(pairs: Vec<(String, String)>) -> Labels {
        let mut text = String::new();
        let mut le_at = None;
        for (name, value) in pairs {
            if le_at.is_none() && name.as_str() > "le" {
                le_at = Some(text.len());
            }
            let _ = write!(text, "{name}=\"{}\",", escape_label_value(&value));
        }
        let le_at = le_at.unwrap_or(text.len());
        text.pop();
        Labels {
            le_at: le_at.min(text.len()),
            text,
        }
    }
}

/// Sanitised labels, sorted by name; attributes that collide after sanitising are joined
/// with `;` in the order of their original keys.
fn labels(attributes: &Attributes) -> Vec<(String, String)> {
    // Attributes come sorted by original key, and the sort is stable, so colliding names
    // stay in that order.
    let mut named: Vec<(String, String)> = attributes
        .iter()
        .map(|(key, value)| (label_name(key), attr_text(value)))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut joined: Vec<(String, String)> = Vec::with_capacity(named.len());
    for (name, text) in named {
        match joined.last_mut() {
            Some((last, existing)) if *last == name => {
                existing.push(';');
                existing.push_str(&text);
            }
            _ => joined.push((name, text)),
        }
    }
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
fn self_metrics(out: &mut Out<'_>, store: &Store) {
    let stats = store.stats().snapshot();
    let (live, retired) = store.instance_counts();
    let by = |label: &str, pairs: &[(&'static str, u64)]| -> Vec<(Option<(String, String)>, u64)> {
        pairs
            .iter()
            .map(|(value, count)| (Some((label.to_string(), value.to_string())), *count))
            .collect()
    };
    let single = |value: u64| vec![(None, value)];
    let state =
        |state: &str, count: usize| (Some(("state".to_string(), state.to_string())), count as u64);
    let exporter = |figure: fn(&ExporterSnapshot) -> u64| -> Vec<(Option<(String, String)>, u64)> {
        stats
            .exporters
            .iter()
            .map(|(name, figures)| {
                (
                    Some(("exporter".to_string(), name.to_string())),
                    figure(figures),
                )
            })
            .collect()
    };
    let families = [
        (
            "fanin_snapshots_written_total",
            "counter",
            "Snapshots written under storage.path.",
            single(stats.storage.snapshots_written),
        ),
        (
            "fanin_snapshot_failures_total",
            "counter",
            "Snapshots that could not be written.",
            single(stats.storage.snapshots_failed),
        ),
        (
            "fanin_snapshot_bytes",
            "gauge",
            "Size of the latest snapshot written.",
            single(stats.storage.last_bytes),
        ),
        (
            "fanin_exporter_batches_sent_total",
            "counter",
            "Batches upstream took, by exporter.",
            exporter(|figures| figures.batches_sent),
        ),
        (
            "fanin_exporter_points_sent_total",
            "counter",
            "Data points (remote-write: samples) in the batches upstream took, by exporter.",
            exporter(|figures| figures.points_sent),
        ),
        (
            "fanin_exporter_batches_failed_total",
            "counter",
            "Batches upstream refused for good, by exporter.",
            exporter(|figures| figures.batches_failed),
        ),
        (
            "fanin_exporter_batches_dropped_total",
            "counter",
            "Batches dropped from a full queue while upstream did not take them, by exporter.",
            exporter(|figures| figures.batches_dropped),
        ),
        (
            "fanin_exporter_retries_total",
            "counter",
            "Attempts that failed and were retried later, by exporter.",
            exporter(|figures| figures.retries),
        ),
        (
            "fanin_exporter_points_rejected_total",
            "counter",
            "Points upstream refused through partial_success, by exporter.",
            exporter(|figures| figures.points_rejected),
        ),
        (
            "fanin_exporter_queued_batches",
            "gauge",
            "Batches waiting to be sent, by exporter.",
            exporter(|figures| figures.queued),
        ),
        (
            "fanin_requests_total",
            "counter",
            "Export requests received, by transport.",
            by("transport", &stats.requests),
        ),
        (
            "fanin_request_errors_total",
            "counter",
            "Export requests refused as a whole, by reason.",
            by("reason", &stats.request_errors),
        ),
        (
            "fanin_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed or did not finish in time, by listener.",
            by("listener", &stats.tls_handshake_failures),
        ),
        (
            "fanin_unauthenticated_requests_total",
            "counter",
            "Requests refused for a missing or wrong bearer token, by listener.",
            by("listener", &stats.unauthenticated),
        ),
        (
            "fanin_points_accepted_total",
            "counter",
            "Data points stored.",
            single(stats.points_accepted),
        ),
        (
            "fanin_points_rejected_total",
            "counter",
            "Data points refused and reported in partial_success, by reason.",
            by("reason", &stats.points_rejected),
        ),
        (
            "fanin_points_dropped_total",
            "counter",
            "Duplicate, out-of-order or overlapping data points dropped, by reason.",
            by("reason", &stats.points_dropped),
        ),
        (
            "fanin_streams",
            "gauge",
            "Streams stored.",
            single(store.stream_count() as u64),
        ),
        (
            "fanin_instances",
            "gauge",
            "Instances stored, by state.",
            vec![state("live", live), state("retired", retired)],
        ),
        (
            "fanin_instances_retired_total",
            "counter",
            "Instances retired, by TTL or because their process was gone.",
            single(stats.instances_retired),
        ),
        (
            "fanin_collisions_total",
            "counter",
            "Streams found written by more than one process; see /api/v1/collisions.",
            single(stats.collisions),
        ),
        (
            "fanin_unreliable_streams",
            "gauge",
            "Streams whose writers fanin cannot tell apart, so their totals are unreliable; see the notes of /api/v1/query and /api/v1/collisions.",
            single(store.unreliable_stream_count() as u64),
        ),
        (
            "fanin_type_conflicts_total",
            "counter",
            "Metric names seen with a second kind, unit or monotonicity.",
            single(stats.type_conflicts),
        ),
    ];
    for (name, kind, help, samples) in families {
        let family = FamilyName {
            name: name.to_string(),
            kind,
        };
        if !out.family(&family, help) {
            continue;
        }
        for (label, value) in samples {
            let labels = match label {
                Some((label, value)) => Labels {
                    text: format!("{label}=\"{value}\""),
                    le_at: 0,
                },
                None => Labels {
                    text: String::new(),
                    le_at: 0,
                },
            };
            out.sample(name, &labels, None, count_of(value));
        }
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
        assert_eq!(FamilyName::of(&metric, Agg::Sum).name, expected);
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
    fn le_goes_between_the_labels_that_sort_around_it() {
        let line = |keys: &[&str], le: Option<&str>| {
            let attributes = Attributes::new(
                keys.iter()
                    .map(|key| (key.to_string(), AttrValue::Str("v".into())))
                    .collect(),
            );
            let mut page = String::new();
            let mut send = |chunk: String| {
                page.push_str(&chunk);
                true
            };
            let mut out = Out::new(&mut send);
            out.sample("m", &Labels::of(labels(&attributes)), le, Total::Int(1));
            out.finish();
            page
        };
        assert_eq!(line(&[], None), "m 1\n");
        assert_eq!(line(&[], Some("1")), "m{le=\"1\"} 1\n");
        assert_eq!(line(&["a"], Some("1")), "m{a=\"v\",le=\"1\"} 1\n");
        assert_eq!(line(&["z"], Some("1")), "m{le=\"1\",z=\"v\"} 1\n");
        assert_eq!(
            line(&["a", "b", "y", "z"], Some("+Inf")),
            "m{a=\"v\",b=\"v\",le=\"+Inf\",y=\"v\",z=\"v\"} 1\n"
        );
        assert_eq!(line(&["a", "z"], None), "m{a=\"v\",z=\"v\"} 1\n");
    }

    #[test]
    fn chunks_are_handed_on_as_written_until_the_reader_is_gone() {
        let mut chunks = Vec::new();
        let mut send = |chunk: String| {
            chunks.push(chunk.len());
            chunks.len() < 2
        };
        let mut out = Out::new(&mut send);
        let labels = Labels::of(Vec::new());
        let mut lines = 0;
        while !out.closed {
            out.sample("a_sample_name", &labels, None, Total::Int(1));
            lines += 1;
            assert!(lines < 100_000, "the reader's answer was ignored");
        }
        out.sample("after", &labels, None, Total::Int(1));
        out.finish();
        assert_eq!(chunks.len(), 2, "nothing is sent once the reader is gone");
        assert!(
            chunks.iter().all(|len| (CHUNK..CHUNK + 64).contains(len)),
            "{chunks:?}"
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
