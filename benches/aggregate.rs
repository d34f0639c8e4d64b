//! Query-side cost at ~100k streams (64 instances × 1,575 streams), through the public router
//! as a client would see it, JSON and text rendering included:
//!
//! - `query_sum_by`: `GET /api/v1/query?metric=..&by=http.route` on one of 25 metrics;
//! - `metrics_page`: `GET /metrics` of a store that did not change since the last scrape:
//!   every metric's kept answer rendered;
//! - `metrics_page_changed`: `GET /metrics` after one worker exported every metric again
//!   (the export not timed): every metric aggregated again and rendered;
//! - `overview_page`: `GET /`, the HTML overview (every metric's total, every worker);
//! - `metric_page`: `GET /ui/metric?metric=..`, one metric's groups and the streams behind
//!   them (the first 1,000 listed).
//!
//! Run with `cargo bench --bench aggregate`. Besides criterion's estimates it prints the
//! p50 and p99 latency over every request it timed.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use fanin::outcome::Outcome;
use fanin::receiver::otlp::store_message;
use fanin::store::{Store, Transport, Writer};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use common::{attr, empty_store};

const INSTANCES: usize = 64;
const METRICS: usize = 25;
/// Attribute combinations per metric: 21 routes × 3 methods.
const COMBINATIONS: usize = 63;

fn request(instance: usize) -> ExportMetricsServiceRequest {
    let metrics = (0..METRICS)
        .map(|metric| Metric {
            name: format!("app.metric.{metric}"),
            unit: "1".into(),
            data: Some(Data::Sum(Sum {
                data_points: (0..COMBINATIONS)
                    .map(|combination| NumberDataPoint {
                        attributes: vec![
                            attr("http.route", format!("/api/{}", combination % 21)),
                            attr(
                                "http.method",
                                ["GET", "POST", "PUT"][combination / 21].into(),
                            ),
                        ],
                        start_time_unix_nano: 1,
                        time_unix_nano: 10,
                        value: Some(number_data_point::Value::AsInt(combination as i64)),
                        ..Default::default()
                    })
                    .collect(),
                aggregation_temporality: 2,
                is_monotonic: metric % 2 == 0,
            })),
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    attr("service.name", "bench".into()),
                    attr("service.instance.id", format!("host-pid-{instance}")),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn loaded_store() -> Store {
    let store = empty_store();
    let writer = Writer {
        transport: Transport::Grpc,
        peer: None,
        pid: None,
    };
    for instance in 0..INSTANCES {
        let outcome: Outcome = store_message(&store, &request(instance), writer);
        assert_eq!(outcome.accepted, (METRICS * COMBINATIONS) as u64);
    }
    assert_eq!(store.stream_count(), INSTANCES * METRICS * COMBINATIONS);
    store
}

fn query_side(criterion: &mut Criterion) {
    // The timer too: /metrics bounds how long a reader may take for each chunk.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|error| panic!("runtime: {error}"));
    let store = loaded_store();
    let settings = fanin::query::QuerySettings::new(Vec::new(), 1).with_history(
        fanin::query::HistorySettings {
            step: Duration::from_secs(10),
            points: 90,
            max_series: 10_000,
        },
    );
    // Two history samples, so that the pages draw their sparklines.
    for _ in 0..2 {
        settings.history.sample(&store, &settings.answers);
    }
    let writes = store.clone();
    let export = request(0);
    let router = fanin::query::router(
        store,
        settings,
        std::sync::Arc::new(fanin::security::Guard::open(fanin::store::Listener::Query)),
        CancellationToken::new(),
    );
    let get = |uri: &'static str| {
        let router = router.clone();
        async move {
            let request = http::Request::get(uri)
                .body(Body::empty())
                .unwrap_or_else(|error| panic!("request: {error}"));
            let response = router
                .oneshot(request)
                .await
                .unwrap_or_else(|error| match error {});
            assert_eq!(response.status(), 200, "{uri}");
            let body = response.into_body().collect().await;
            body.map(|collected| collected.to_bytes().len())
                .unwrap_or(0)
        }
    };
    let mut group = criterion.benchmark_group("query_100k_streams");
    group.sample_size(20);
    // Every request is timed on its own too, for the percentiles printed at the end.
    let mut cases: [(&str, &str, Vec<Duration>); 5] = [
        (
            "query_sum_by",
            "/api/v1/query?metric=app.metric.0&by=http.route",
            Vec::new(),
        ),
        ("metrics_page", "/metrics", Vec::new()),
        ("metrics_page_changed", "/metrics", Vec::new()),
        ("overview_page", "/", Vec::new()),
        ("metric_page", "/ui/metric?metric=app.metric.0", Vec::new()),
    ];
    let writer = Writer {
        transport: Transport::Grpc,
        peer: None,
        pid: None,
    };
    for (name, uri, timings) in &mut cases {
        group.bench_function(*name, |bench| {
            bench.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    if *name == "metrics_page_changed" {
                        store_message(&writes, &export, writer);
                    }
                    let start = Instant::now();
                    runtime.block_on(get(uri));
                    let took = start.elapsed();
                    timings.push(took);
                    total += took;
                }
                total
            })
        });
    }
    group.finish();
    for (name, uri, mut timings) in cases {
        timings.sort();
        let at = |fraction: f64| {
            let index = ((timings.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
            timings
                .get(index)
                .map_or(f64::NAN, |took| took.as_secs_f64() * 1e3)
        };
        println!(
            "latency {name} ({uri}): {} requests, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            timings.len(),
            at(0.50),
            at(0.99),
            at(1.0)
        );
    }
}

/// 100,000 aggregated series (2 instances × 25 metrics × 4,000 attribute combinations,
/// the two instances' streams adding up in pairs): one interval's export, aggregation and
/// encoding included, for each exporter.
fn export_side(criterion: &mut Criterion) {
    const SERIES_PER_METRIC: usize = 4_000;
    let store = empty_store();
    let writer = Writer {
        transport: Transport::Grpc,
        peer: None,
        pid: None,
    };
    for instance in 0..2 {
        let mut request = request(instance);
        for metric in &mut request.resource_metrics[0].scope_metrics[0].metrics {
            if let Some(Data::Sum(sum)) = &mut metric.data {
                sum.data_points = (0..SERIES_PER_METRIC)
                    .map(|index| NumberDataPoint {
                        attributes: vec![attr("shard", format!("s{index}"))],
                        start_time_unix_nano: 1,
                        time_unix_nano: 10,
                        value: Some(number_data_point::Value::AsInt(index as i64)),
                        ..Default::default()
                    })
                    .collect();
            }
        }
        store_message(&store, &request, writer);
    }
    // A fresh `Answers` each time: an exporter's interval is longer than a worker's, so
    // every metric has changed by the next batch and nothing kept can be used.
    let collect = || {
        let answers = fanin::query::Answers::new(std::sync::Arc::from([]));
        fanin::query::prometheus::Families::collect(&store, &answers)
    };
    let families = collect();
    assert_eq!(families.series(), METRICS * SERIES_PER_METRIC);
    let mut group = criterion.benchmark_group("export/100k-series");
    group.sample_size(10);
    group.bench_function("otlp", |bench| {
        let mut continuity = fanin::export::otlp::Continuity::default();
        bench.iter(|| {
            let families = collect();
            let (request, _) = fanin::export::otlp::request(&families, &[], &mut continuity, 10);
            prost::Message::encode_to_vec(&request).len()
        })
    });
    group.bench_function("prometheus_remote_write", |bench| {
        bench.iter(|| {
            let families = collect();
            fanin::export::remote_write::body(&families, 10, Vec::new()).map(|(body, _)| body.len())
        })
    });
    group.bench_function("aggregation_alone", |bench| {
        bench.iter(|| collect().series())
    });
    // One history sample (`query.history`) of the 100k groups, into rings of 90 points
    // that are already full (the steady state), with room for every group.
    let history = fanin::query::History::new(fanin::query::HistorySettings {
        step: Duration::from_secs(10),
        points: 90,
        max_series: 200_000,
    });
    let fresh = || fanin::query::Answers::new(std::sync::Arc::from([]));
    for _ in 0..90 {
        history.sample(&store, &fresh());
    }
    assert_eq!(history.counts(), (METRICS * SERIES_PER_METRIC, 0));
    group.bench_function("history_sample", |bench| {
        bench.iter(|| history.sample(&store, &fresh()))
    });
    group.finish();
}

criterion_group!(benches, query_side, export_side);
criterion_main!(benches);
