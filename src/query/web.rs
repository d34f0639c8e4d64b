//! The page at `/` and `/ui/metric`: workers, totals and collisions at a glance, from the
//! same answers the JSON API gives (`answer::answer`, the store's views, the history).
//!
//! Server-rendered HTML, readable without JavaScript; `fanin.js` (embedded, as is
//! `fanin.css`) fetches the same page again every few seconds and swaps its `<main>`, so the
//! numbers move without a reload. Nothing comes from elsewhere: the Content-Security-Policy
//! allows this origin's script and stylesheet only, and no inline script at all.
//!
//! Every attribute, metric name, unit and description is user input: all text goes
//! through [`esc`], every URL parameter through `form_urlencoded`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::QueryError;
use super::answer::{self, Answer};
use super::history::History;
use super::json::attr_text;
use super::params::QueryParams;
use crate::aggregate::{Aggregated, Group};
use crate::config::AggregationRule;
use crate::model::{AttrValue, Attributes, Total};
use crate::store::{FIX, InstanceView, Store, Transport};

pub const CSS: &str = include_str!("web/fanin.css");
pub const JS: &str = include_str!("web/fanin.js");

/// What the page may load and run: this origin's stylesheet and script, nothing inline.
const POLICY: &str = "default-src 'none'; style-src 'self'; script-src 'self'; \
                      connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; \
                      frame-ancestors 'none'";

/// Text made safe for HTML, in element content and in quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// A query string from `pairs`, each part encoded.
fn query_string<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        serializer.append_pair(key, value);
    }
    serializer.finish()
}

pub fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A page that says what went wrong, with `status`.
pub fn error_page(status: axum::http::StatusCode, message: &str) -> Response {
    let main = format!(
        "<section><h1>{}</h1><p class=\"bad\">{}</p><p><a href=\"/\">Back to the overview</a></p></section>",
        status.as_u16(),
        esc(message)
    );
    let mut response = html(page("fanin: error", &main));
    *response.status_mut() = status;
    response
}

pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Pages rendered since start: each `<main>` carries its number, so a reader (and a test)
/// can tell a refreshed page from the one first loaded.
static RENDERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn page(title: &str, main: &str) -> String {
    let render = RENDERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/ui/fanin.css\">\
         <script src=\"/ui/fanin.js\" defer></script></head>\
         <body><header><a class=\"home\" href=\"/\">fanin</a> <span class=\"muted\">{}</span></header>\
         <main id=\"main\" data-render=\"{render}\">{main}</main>\
         <footer class=\"muted\">Refreshes every 5 s. JSON: <a href=\"/api/v1/metrics\">/api/v1/metrics</a>, \
         <a href=\"/api/v1/instances\">/api/v1/instances</a>, <a href=\"/api/v1/collisions\">/api/v1/collisions</a>, \
         <a href=\"/api/v1/stats\">/api/v1/stats</a>; Prometheus: <a href=\"/metrics\">/metrics</a>.</footer>\
         </body></html>\n",
        esc(title),
        esc(title),
    )
}

/// "4 s", "6 min", "2 h" ago from `then`.
fn ago(then: SystemTime) -> String {
    let age = SystemTime::now()
        .duration_since(then)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match age {
        0..=119 => format!("{age} s"),
        120..=7199 => format!("{} min", age / 60),
        _ => format!("{} h", age / 3600),
    }
}

fn total_text(total: Total) -> String {
    match total {
        Total::Int(value) => value.to_string(),
        Total::Double(value) => value.to_string(),
    }
}

/// A group's value in words and numbers.
fn value_text(value: &Aggregated) -> String {
    match value {
        Aggregated::Number(total) => total_text(*total),
        Aggregated::Histogram { histogram, .. } => format!(
            "count {}, sum {}",
            histogram.count,
            histogram.sum.map_or("?".into(), |sum| sum.to_string())
        ),
        Aggregated::ExpHistogram(histogram) => format!(
            "count {}, sum {}",
            histogram.count,
            histogram.sum.map_or("?".into(), |sum| sum.to_string())
        ),
        Aggregated::Summary { count, sum } => format!("count {count}, sum {sum}"),
    }
}

fn attributes_text(attributes: &Attributes) -> String {
    if attributes.is_empty() {
        return "<span class=\"muted\">(all)</span>".into();
    }
    attributes
        .iter()
        .map(|(key, value)| {
            format!(
                "<span class=\"attr\"><b>{}</b>={}</span>",
                esc(key),
                esc(&attr_text(value))
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A sparkline of `values` (NaN: a gap) as inline SVG, drawn on the server.
fn sparkline(values: &[f64]) -> String {
    let present: Vec<f64> = values
        .iter()
        .copied()
        .filter(|value| value.is_finite())
        .collect();
    if present.len() < 2 {
        return String::new();
    }
    let low = present.iter().copied().fold(f64::INFINITY, f64::min);
    let high = present.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let span = if high > low && (high - low).is_finite() {
        high - low
    } else {
        1.0
    };
    let numbers: Vec<Option<f64>> = values
        .iter()
        .map(|value| value.is_finite().then_some(*value))
        .collect();
    let step = 100.0 / (numbers.len().max(2) - 1) as f64;
    // Runs of two points or more between gaps; a point alone draws no line.
    let mut lines = Vec::new();
    let mut points = (String::new(), 0);
    for (index, value) in numbers.iter().enumerate() {
        match value {
            Some(value) => {
                let y = (19.0 - (value - low) / span * 18.0).clamp(1.0, 19.0);
                let _ = write!(points.0, "{:.1},{y:.1} ", index as f64 * step);
                points.1 += 1;
            }
            None => {
                let (run, count) = std::mem::take(&mut points);
                if count > 1 {
                    lines.push(run);
                }
            }
        }
    }
    if points.1 > 1 {
        lines.push(points.0);
    }
    let lines: String = lines
        .iter()
        .map(|points| format!("<polyline points=\"{}\"/>", points.trim_end()))
        .collect();
    format!(
        "<svg class=\"spark\" viewBox=\"0 0 100 20\" preserveAspectRatio=\"none\" role=\"img\" \
         aria-label=\"the last {} samples, from {} to {}\">{lines}</svg>",
        numbers.len(),
        low,
        high
    )
}

/// Each series' history for `params`, by its attributes (empty without history).
fn histories(
    history: &History,
    rules: &[AggregationRule],
    params: &QueryParams,
) -> HashMap<Attributes, Vec<f64>> {
    history
        .select(params, rules)
        .map(|selected| selected.series.into_iter().collect())
        .unwrap_or_default()
}

/// The history of a metric's whole total (one series), if it has one.
fn total_history(history: &History, rules: &[AggregationRule], metric: &str) -> Vec<f64> {
    // Averages cannot be regrouped: a metric averaged has a whole history only when it has
    // one group.
    let whole = QueryParams {
        metric: metric.to_string(),
        agg: None,
        by: Some(Vec::new()),
        matches: Vec::new(),
    };
    let selected = history.select(&whole, rules).or_else(|_| {
        history.select(
            &QueryParams {
                by: None,
                ..whole.clone()
            },
            rules,
        )
    });
    match selected {
        Ok(mut selected) if selected.series.len() == 1 => selected.series.remove(0).1,
        _ => Vec::new(),
    }
}

/// Most rows a table of the page lists; the JSON API has them all.
const ROWS: usize = 500;

/// The worker an instance names, in words: its id, else its pid, else its resource.
fn instance_name(attributes: &Attributes) -> String {
    for key in ["service.instance.id", "process.pid"] {
        if let Some(value) = attributes.get(key) {
            return attr_text(value);
        }
    }
    attributes
        .iter()
        .map(|(key, value)| format!("{key}={}", attr_text(value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn pid_of(view: &InstanceView) -> Option<String> {
    match view.attributes.get("process.pid") {
        Some(AttrValue::Int(pid)) => Some(pid.to_string()),
        _ => view.last_writer.pid.map(|pid| pid.to_string()),
    }
}

/// What a reader should know about one instance, in a sentence.
fn instance_state(view: &InstanceView) -> (&'static str, String) {
    let worker = match pid_of(view) {
        Some(pid) => format!("worker {pid}"),
        None => "this worker".to_string(),
    };
    match view.retired {
        None => ("live", format!("exported {} ago", ago(view.last_seen))),
        Some(retirement) => {
            let why = match retirement.reason {
                crate::store::RetireReason::Expired => "no export for instance_ttl",
                crate::store::RetireReason::ProcessGone => "its process is gone",
            };
            let state = if view.evicted { "evicted" } else { "retired" };
            (
                state,
                format!(
                    "{worker} stopped exporting {} ago ({why}); its counters keep counting, \
                     its gauges left the totals",
                    ago(view.last_seen)
                ),
            )
        }
    }
}

fn writer_text(view: &InstanceView) -> String {
    let writer = &view.last_writer;
    match (writer.transport, writer.peer, writer.pid) {
        (Transport::Unix, _, Some(pid)) => format!("unix socket, pid {pid}"),
        (transport, Some(peer), _) => format!("{} from {peer}", transport.as_str()),
        (transport, ..) => transport.as_str().to_string(),
    }
}

/// The overview at `/`.
pub fn overview(store: &Store, rules: &[AggregationRule], history: &History) -> String {
    let mut main = String::new();
    let mut instances = store.instances();
    instances.sort_by_cached_key(|view| (view.retired.is_some(), instance_name(&view.attributes)));
    let live = instances
        .iter()
        .filter(|view| view.retired.is_none())
        .count();
    let collisions = store.collisions();
    let inherited = store.inherited_state();
    let stats = store.stats().snapshot();
    let _ = write!(
        main,
        "<section class=\"summary\"><p><b>{live}</b> live workers, <b>{}</b> retired or \
         evicted; <b>{}</b> streams; <b class=\"{}\">{}</b> colliding streams; <b>{}</b> \
         points accepted.</p></section>",
        instances.len() - live,
        store.stream_count(),
        if collisions.is_empty() { "ok" } else { "bad" },
        collisions.len(),
        stats.points_accepted,
    );

    main.push_str(&findings(&collisions, &inherited));

    main.push_str("<section><h2>Metrics</h2><table id=\"metrics\"><thead><tr><th>metric</th><th>kind</th><th>unit</th><th>aggregation</th><th>total</th><th>last 15 minutes</th></tr></thead><tbody>");
    let mut identities = store.metric_identities();
    identities.sort_by(|a, b| a.metric.name.cmp(&b.metric.name));
    for identity in identities {
        let name = &identity.metric.name;
        let params = QueryParams {
            metric: name.clone(),
            agg: None,
            by: Some(Vec::new()),
            matches: Vec::new(),
        };
        let (agg, total) = match answer::answer(store, rules, &params) {
            Ok(Answer { agg, groups, .. }) => (
                agg.as_str(),
                groups
                    .first()
                    .map_or_else(|| "-".to_string(), |group| value_text(&group.value)),
            ),
            Err(_) => ("-", "-".to_string()),
        };
        let link = query_string([("metric", name.as_str())]);
        let _ = write!(
            main,
            "<tr><td><a href=\"/ui/metric?{}\">{}</a></td><td>{}</td><td>{}</td><td>{agg}</td>\
             <td class=\"num\" data-metric=\"{}\">{}</td><td>{}</td></tr>",
            esc(&link),
            esc(name),
            identity.metric.kind.as_str(),
            esc(&identity.metric.unit),
            esc(name),
            esc(&total),
            sparkline(&total_history(history, rules, name)),
        );
    }
    main.push_str("</tbody></table></section>");

    main.push_str("<section><h2>Workers</h2><table id=\"instances\"><thead><tr><th>worker</th><th>service</th><th>pid</th><th>state</th><th>last writer</th><th>streams</th><th>exports</th></tr></thead><tbody>");
    for view in instances.iter().take(ROWS) {
        let (state, sentence) = instance_state(view);
        let service = view
            .attributes
            .get("service.name")
            .map(attr_text)
            .unwrap_or_default();
        let _ = write!(
            main,
            "<tr class=\"{state}\"><td class=\"instance\">{}</td><td>{}</td><td>{}</td>\
             <td><span class=\"badge {state}\">{state}</span> {}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&instance_name(&view.attributes)),
            esc(&service),
            esc(&pid_of(view).unwrap_or_default()),
            esc(&sentence),
            esc(&writer_text(view)),
            view.streams,
            view.exports,
        );
    }
    main.push_str("</tbody></table>");
    if instances.len() > ROWS {
        let _ = write!(
            main,
            "<p class=\"muted\">The first {ROWS} of {} workers (live first); all of them: \
             <a href=\"/api/v1/instances\">/api/v1/instances</a>.</p>",
            instances.len()
        );
    }
    main.push_str("</section>");

    main.push_str(&ingest(&stats, history));
    page("fanin: workers, totals, collisions", &main)
}

/// Collisions and inherited-state findings, with their evidence and the fix.
fn findings(
    collisions: &[crate::store::CollisionView],
    inherited: &[crate::store::InheritedState],
) -> String {
    let mut out = String::from("<section id=\"collisions\"><h2>Collisions</h2>");
    if collisions.is_empty() && inherited.is_empty() {
        out.push_str(
            "<p class=\"ok\">No stream is written by two processes, and no worker carries \
             counts it inherited.</p></section>",
        );
        return out;
    }
    let _ = write!(out, "<p class=\"fix\"><b>How to fix:</b> {}.</p>", esc(FIX));
    if !collisions.is_empty() {
        out.push_str("<table><thead><tr><th>metric</th><th>worker</th><th>attributes</th><th>what was seen</th><th>total</th><th>writers</th></tr></thead><tbody>");
        for collision in collisions.iter().take(ROWS) {
            let evidence: Vec<&str> = collision
                .evidence
                .iter()
                .map(|evidence| evidence.describe())
                .collect();
            let verdict = if collision.repaired {
                "<span class=\"badge warn\">repaired</span> exact: fanin tells the writers apart"
            } else {
                "<span class=\"badge bad\">unreliable</span> the writers cannot be told apart"
            };
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{verdict}</td><td>{}</td></tr>",
                esc(&collision.key.metric.name),
                esc(&instance_name(&collision.instance)),
                attributes_text(&collision.key.attributes),
                esc(&evidence.join("; ")),
                esc(&collision.writers.join(", ")),
            );
        }
        out.push_str("</tbody></table>");
    }
    if collisions.len() > ROWS {
        let _ = write!(
            out,
            "<p class=\"muted\">The first {ROWS} of {} colliding streams; all of them: \
             <a href=\"/api/v1/collisions\">/api/v1/collisions</a>.</p>",
            collisions.len()
        );
    }
    for finding in inherited.iter().take(ROWS) {
        let _ = write!(
            out,
            "<p class=\"bad\">{} workers report <b>{}</b> {} with one start time ({}): they \
             carry counts their parent recorded before fork, and the total counts them once \
             per worker. Build the meter provider after fork.</p>",
            finding.instances.len(),
            esc(&finding.metric.name),
            attributes_text(&finding.attributes),
            finding.start,
        );
    }
    out.push_str("</section>");
    out
}

/// Points accepted, rejected and dropped, per second over the last history step and in
/// all.
fn ingest(stats: &crate::store::StatsSnapshot, history: &History) -> String {
    let rates = history.rates();
    let mut out = String::from(
        "<section><h2>Ingest</h2><table id=\"ingest\"><thead><tr><th>points</th><th>per second</th><th>since start</th></tr></thead><tbody>",
    );
    let mut row = |what: String, key: &str, total: u64| {
        let rate = rates
            .as_ref()
            .and_then(|rates| rates.get(key).copied())
            .map_or_else(|| "-".to_string(), |rate| format!("{rate:.1}"));
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=\"num\">{rate}</td><td class=\"num\">{total}</td></tr>",
            esc(&what)
        );
    };
    row("accepted".into(), "accepted", stats.points_accepted);
    for (reason, count) in &stats.points_rejected {
        if *count > 0 {
            row(
                format!("rejected: {reason}"),
                &format!("rejected:{reason}"),
                *count,
            );
        }
    }
    for (reason, count) in &stats.points_dropped {
        if *count > 0 {
            row(
                format!("dropped: {reason}"),
                &format!("dropped:{reason}"),
                *count,
            );
        }
    }
    out.push_str("</tbody></table></section>");
    out
}

/// One metric's page: its groups as `params` select them, the streams behind them, the
/// notes, a histogram's buckets.
///
/// # Errors
/// [`QueryError`] as `/api/v1/query` gives it.
pub fn metric(
    store: &Store,
    rules: &[AggregationRule],
    history: &History,
    params: &QueryParams,
) -> Result<String, QueryError> {
    let answer = answer::answer(store, rules, params)?;
    let name = &params.metric;
    let mut main = String::new();
    let by = params.by.as_ref().map(|keys| keys.join(","));
    let _ = write!(
        main,
        "<section><h1>{}</h1><p class=\"muted\">{} {}{}</p>\
         <form method=\"get\" action=\"/ui/metric\"><input type=\"hidden\" name=\"metric\" value=\"{}\">\
         <label>by <input name=\"by\" value=\"{}\" placeholder=\"every attribute\"></label> \
         <label>agg <select name=\"agg\">",
        esc(name),
        answer.metric.kind.as_str(),
        esc(&answer.metric.unit),
        store
            .metric_identity(name)
            .filter(|(_, description)| !description.is_empty())
            .map(|(_, description)| format!(": {}", esc(&description)))
            .unwrap_or_default(),
        esc(name),
        esc(by.as_deref().unwrap_or("")),
    );
    for agg in ["sum", "max", "min", "avg", "count"] {
        let selected = if answer.agg.as_str() == agg {
            " selected"
        } else {
            ""
        };
        let _ = write!(main, "<option{selected}>{agg}</option>");
    }
    main.push_str("</select></label> <button>show</button></form></section>");

    if !answer.notes.is_empty() {
        main.push_str("<section class=\"notes\">");
        for note in &answer.notes {
            let _ = write!(main, "<p class=\"warn\">{}</p>", esc(note));
        }
        main.push_str("</section>");
    }

    main.push_str("<section><h2>Totals</h2><table id=\"groups\"><thead><tr><th>attributes</th><th>value</th><th>workers</th><th>last 15 minutes</th></tr></thead><tbody>");
    let sparklines = histories(history, rules, params);
    for group in answer.groups.iter().take(ROWS) {
        let _ = write!(
            main,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            attributes_text(&group.attributes),
            esc(&value_text(&group.value)),
            group.instances,
            sparkline(
                sparklines
                    .get(&group.attributes)
                    .map_or(&[][..], Vec::as_slice)
            ),
        );
    }
    main.push_str("</tbody></table>");
    if answer.groups.len() > ROWS {
        let _ = write!(
            main,
            "<p class=\"muted\">The first {ROWS} of {} groups; all of them: \
             <a href=\"/api/v1/query?{}\">/api/v1/query</a>.</p>",
            answer.groups.len(),
            esc(&query_string([("metric", name.as_str())]))
        );
    }
    main.push_str("</section>");

    // Buckets of the first few groups: each is a table of its own.
    for group in answer.groups.iter().take(10) {
        main.push_str(&buckets(group));
    }

    main.push_str("<section><h2>Streams behind it</h2><table id=\"streams\"><thead><tr><th>worker</th><th>state</th><th>attributes</th><th>value</th><th>writers</th></tr></thead><tbody>");
    let mut streams = store.streams(name);
    streams.sort_by_cached_key(|view| instance_name(&view.instance));
    for view in streams.iter().take(ROWS) {
        let value = view
            .state
            .value
            .as_ref()
            .map_or_else(|| "-".to_string(), stream_value_text);
        let reliability = match view.state.unreliable {
            Some(evidence) => format!(
                "<span class=\"badge bad\">unreliable</span> {}",
                esc(evidence.describe())
            ),
            None if view.live => "<span class=\"badge live\">live</span>".to_string(),
            None => "<span class=\"badge retired\">retired</span>".to_string(),
        };
        let _ = write!(
            main,
            "<tr><td class=\"instance\">{}</td><td>{reliability}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(&instance_name(&view.instance)),
            attributes_text(&view.key.attributes),
            esc(&value),
            view.state.runs.len().max(1),
        );
    }
    main.push_str("</tbody></table>");
    if streams.len() > ROWS {
        let _ = write!(
            main,
            "<p class=\"muted\">The first {ROWS} of {} streams; all of them: \
             <a href=\"/api/v1/series?{}\">/api/v1/series</a>.</p>",
            streams.len(),
            esc(&query_string([("metric", name.as_str())]))
        );
    }
    main.push_str("</section>");
    Ok(page(&format!("fanin: {name}"), &main))
}

fn stream_value_text(value: &crate::model::StreamValue) -> String {
    use crate::model::StreamValue;
    match value {
        StreamValue::Number(number) => match number {
            crate::model::Number::Int(value) => value.to_string(),
            crate::model::Number::Double(value) => value.to_string(),
        },
        StreamValue::Histogram(histogram) => format!("count {}", histogram.count),
        StreamValue::ExpHistogram(histogram) => format!("count {}", histogram.count),
        StreamValue::Summary(summary) => format!("count {}", summary.count),
    }
}

/// A histogram group's buckets as bars.
fn buckets(group: &Group) -> String {
    let Aggregated::Histogram {
        histogram,
        bounds_differ: false,
    } = &group.value
    else {
        return String::new();
    };
    let highest = histogram
        .bucket_counts
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    let mut out = format!(
        "<section><h2>Buckets {}</h2><table class=\"buckets\"><tbody>",
        attributes_text(&group.attributes)
    );
    for (index, count) in histogram.bucket_counts.iter().enumerate() {
        let bound = histogram
            .bounds
            .get(index)
            .map_or_else(|| "+Inf".to_string(), |bound| format!("≤ {bound}"));
        let width = (*count as f64 / highest as f64 * 100.0).round();
        let _ = write!(
            out,
            "<tr><td class=\"num\">{}</td><td class=\"bar\"><svg viewBox=\"0 0 100 10\" \
             preserveAspectRatio=\"none\"><rect width=\"{width}\" height=\"10\"/></svg></td>\
             <td class=\"num\">{count}</td></tr>",
            esc(&bound),
        );
    }
    out.push_str("</tbody></table></section>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_stays_text() {
        assert_eq!(
            esc("<script>alert(\"1\")</script> & 'x'"),
            "&lt;script&gt;alert(&quot;1&quot;)&lt;/script&gt; &amp; &#39;x&#39;"
        );
    }

    #[test]
    fn a_sparkline_breaks_at_gaps_and_needs_two_points() {
        let gap = f64::NAN;
        assert_eq!(sparkline(&[1.0]), "");
        let line = sparkline(&[1.0, 2.0, gap, 3.0]);
        assert_eq!(line.matches("<polyline").count(), 1, "{line}");
        let line = sparkline(&[1.0, 2.0, gap, 3.0, 4.0]);
        assert_eq!(line.matches("<polyline").count(), 2, "{line}");
        // Values too far apart for their difference to be finite still draw.
        let line = sparkline(&[-f64::MAX, f64::MAX]);
        assert!(
            line.contains("<polyline") && !line.contains("NaN"),
            "{line}"
        );
    }
}
