//! The receive path, step by step, on one realistic export request: 1000 points from one
//! worker (counters, up-down counters, gauges and histograms with three point attributes).
//!
//! - `decode`: prost decode alone, the floor any Rust OTLP receiver pays;
//! - `decode_view`: plus the view of the decoded message that the store walks;
//! - `decode_convert_ingest`: prost decode, then storing every point into existing streams
//!   (the steady state of a worker exporting every few seconds): the path for requests the
//!   in-place reader declines;
//! - `read_in_place`: `receiver::wire::parse` alone, the in-place reader;
//! - `read_in_place_store`: the receive path fanin takes (`receiver::receive_protobuf`):
//!   read in place, then store every point into existing streams. After the first pass the
//!   store knows every point's attribute block (`store::KnownBlocks`), as it does for a
//!   worker exporting the same streams every interval;
//! - `read_in_place_store_unknown`: the same with no block known (a request's first sight,
//!   or a store whose known blocks were just emptied): read in place, store, learn nothing.
//!
//! Run with `cargo bench --bench ingest`; throughput is in points per second. For
//! instruction counts, run one pass under callgrind and collect `prost_path`,
//! `in_place_path` and `unknown_path` (see BENCHMARKS.md).

mod common;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fanin::outcome::Outcome;
use fanin::receiver::otlp::{store_message, store_view};
use fanin::receiver::{receive_protobuf, view, wire};
use fanin::store::{NewBlocks, Store, Transport, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, metric::Data, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use common::{attr, empty_store};

const POINTS_PER_REQUEST: usize = 1000;
const POINTS_PER_METRIC: usize = 25;

fn point_attributes(index: usize) -> Vec<KeyValue> {
    vec![
        attr("http.route", format!("/api/v1/resource/{}", index % 25)),
        attr("http.method", ["GET", "POST", "PUT"][index % 3].to_string()),
        attr("http.status_code", format!("{}", 200 + (index % 5))),
    ]
}

fn number(index: usize, time: u64, value: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: point_attributes(index),
        start_time_unix_nano: 1_700_000_000_000_000_000,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    }
}

/// One worker's export at `time`: 40 metrics of 25 points each, ten of every kind.
fn request(time: u64) -> ExportMetricsServiceRequest {
    let bounds = vec![
        0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 1000.0,
    ];
    let metrics = (0..POINTS_PER_REQUEST / POINTS_PER_METRIC)
        .map(|metric| {
            let points = (0..POINTS_PER_METRIC).map(|point| metric * POINTS_PER_METRIC + point);
            let data = match metric % 4 {
                0 => Data::Sum(Sum {
                    data_points: points
                        .map(|index| number(index, time, time as f64))
                        .collect(),
                    aggregation_temporality: 2,
                    is_monotonic: true,
                }),
                1 => Data::Sum(Sum {
                    data_points: points.map(|index| number(index, time, 3.0)).collect(),
                    aggregation_temporality: 2,
                    is_monotonic: false,
                }),
                2 => Data::Gauge(Gauge {
                    data_points: points.map(|index| number(index, time, 0.5)).collect(),
                }),
                _ => Data::Histogram(Histogram {
                    data_points: points
                        .map(|index| HistogramDataPoint {
                            attributes: point_attributes(index),
                            start_time_unix_nano: 1_700_000_000_000_000_000,
                            time_unix_nano: time,
                            count: 11,
                            sum: Some(1234.5),
                            bucket_counts: vec![1; bounds.len() + 1],
                            explicit_bounds: bounds.clone(),
                            min: Some(0.1),
                            max: Some(2000.0),
                            ..Default::default()
                        })
                        .collect(),
                    aggregation_temporality: 2,
                }),
            };
            Metric {
                name: format!("app.metric.{metric}"),
                unit: "1".into(),
                data: Some(data),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    attr("service.name", "bench".into()),
                    attr("service.instance.id", "bench-host-pid-4242".into()),
                    attr("host.name", "bench-host".into()),
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

fn receive_path(criterion: &mut Criterion) {
    let encoded = request(1_700_000_001_000_000_000).encode_to_vec();
    let writer = Writer {
        transport: Transport::Grpc,
        peer: None,
        pid: None,
    };
    let mut group = criterion.benchmark_group("receive");
    group.throughput(Throughput::Elements(POINTS_PER_REQUEST as u64));

    group.bench_function("decode", |bench| {
        bench.iter(|| ExportMetricsServiceRequest::decode(black_box(&encoded[..])))
    });

    group.bench_function("decode_view", |bench| {
        bench.iter(|| {
            let decoded =
                ExportMetricsServiceRequest::decode(black_box(&encoded[..])).unwrap_or_default();
            let nested = view::nested_values(&decoded);
            view::Request::of_message(&decoded, &nested).points.len()
        })
    });

    group.bench_function("read_in_place", |bench| {
        bench.iter(|| wire::parse(black_box(&encoded[..])).map(|request| request.points.len()))
    });

    let store = ready_store(writer);
    let mut time = 1_700_000_002_000_000_000u64;
    group.bench_function("decode_convert_ingest", |bench| {
        bench.iter_batched(
            || {
                // Every iteration is a newer export, so each point is applied, not dropped.
                time += 1_000_000_000;
                request(time).encode_to_vec()
            },
            |bytes| prost_path(&store, &bytes, writer),
            BatchSize::SmallInput,
        )
    });

    let paths: [(&str, Path); 2] = [
        ("read_in_place_store", in_place_path),
        ("read_in_place_store_unknown", unknown_path),
    ];
    for (name, path) in paths {
        let store = ready_store(writer);
        group.bench_function(name, |bench| {
            bench.iter_batched(
                || {
                    time += 1_000_000_000;
                    request(time).encode_to_vec()
                },
                |bytes| path(&store, &bytes, writer),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// One way of receiving an encoded request into a store.
type Path = fn(&Store, &[u8], Writer);

/// A store that already holds the request's 1000 streams, and knows their attribute blocks.
fn ready_store(writer: Writer) -> Store {
    let store = empty_store();
    let first = request(1_700_000_001_000_000_000).encode_to_vec();
    if let Err(error) = receive_protobuf(&store, &first, writer) {
        panic!("refused: {error}");
    }
    assert!(!store.known_blocks().is_empty());
    store
}

/// prost decode, the message's view, store: what fanin does with a request the reader
/// declines.
#[inline(never)]
fn prost_path(store: &Store, bytes: &[u8], writer: Writer) {
    let decoded = ExportMetricsServiceRequest::decode(bytes).unwrap_or_default();
    let outcome: Outcome = store_message(store, &decoded, writer);
    assert_eq!(outcome.accepted, POINTS_PER_REQUEST as u64);
}

/// Read in place and store, known blocks used and learnt: fanin's receive path.
#[inline(never)]
fn in_place_path(store: &Store, bytes: &[u8], writer: Writer) {
    let outcome =
        receive_protobuf(store, bytes, writer).unwrap_or_else(|error| panic!("refused: {error}"));
    assert_eq!(outcome.accepted, POINTS_PER_REQUEST as u64);
}

/// Read in place and store with no block known, learning none.
#[inline(never)]
fn unknown_path(store: &Store, bytes: &[u8], writer: Writer) {
    let request = wire::parse(bytes).unwrap_or_else(|declined| panic!("declined: {declined:?}"));
    let mut new_blocks = NewBlocks::for_table(&store.known_blocks());
    let outcome = store_view(store, &request, writer, Some(&mut new_blocks));
    assert_eq!(outcome.accepted, POINTS_PER_REQUEST as u64);
    assert!(!new_blocks.is_empty(), "the request's blocks are new");
}

criterion_group!(benches, receive_path);
criterion_main!(benches);
