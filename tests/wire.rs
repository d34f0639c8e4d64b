//! The in-place protobuf reader (`receiver::wire`) reads exactly what prost reads.
//!
//! Three angles:
//! - generated requests of every kind, with the fields fanin ignores filled in too: the
//!   view equals prost's decode (fields fanin ignores set aside), and storing the view
//!   leaves the store exactly as storing prost's decode does;
//! - the same requests corrupted at random (bytes flipped, dropped, inserted, truncated):
//!   whenever the reader accepts, prost accepts and reads the same; whenever prost refuses,
//!   the reader declines (and the receiver lets prost word the error);
//! - hand-made encodings prost accepts but SDKs rarely send: unpacked repeated fields,
//!   fields out of order or repeated, unknown fields of every wire type, long varints.
//!
//! Each angle is also taken with the store's known attribute blocks
//! (`wire::parse_known`, `store::KnownBlocks`), as the receiver reads: after the blocks of
//! earlier requests were learnt, a request reads and stores as it does with none known.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "common/mutation.rs"]
mod mutation;

use std::num::NonZeroUsize;

use fanin::model::InstanceAttributes;
use fanin::outcome::Outcome;
use fanin::receiver::otlp::{store_message, store_view};
use fanin::receiver::view::{self, ValueView};
use fanin::receiver::wire::{self, Declined};
use fanin::store::{CollisionPolicy, NewBlocks, Store, StoreSettings, Transport, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, EntityRef, InstrumentationScope, KeyValue, any_value,
};
use opentelemetry_proto::tonic::metrics::v1::{
    Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
    HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
    SummaryDataPoint, exemplar, exponential_histogram_data_point::Buckets, metric::Data,
    number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use mutation::{Rng, mutate};

fn any(value: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(value) })
}

fn attribute(rng: &mut Rng) -> KeyValue {
    use any_value::Value as V;
    // Few keys, so that repeated keys (last one wins) occur.
    let key = rng
        .pick(&["route", "method", "status", "", "k\u{e9}y"])
        .to_string();
    let value = match rng.below(10) {
        0 => any(V::StringValue(
            rng.pick(&["/a", "", "GET", "\u{2603}"]).to_string(),
        )),
        1 => any(V::BoolValue(rng.chance(50))),
        2 => any(V::IntValue(*rng.pick(&[0, 1, -1, i64::MIN, i64::MAX]))),
        3 => any(V::DoubleValue(*rng.pick(&[
            0.0,
            -0.0,
            1.5,
            f64::NAN,
            f64::INFINITY,
        ]))),
        4 => any(V::BytesValue(vec![0, 255, 7])),
        5 => any(V::StringValueStrindex(3)),
        6 => Some(AnyValue { value: None }),
        7 => None,
        _ => any(V::StringValue(format!("v{}", rng.below(3)))),
    };
    KeyValue {
        key,
        value,
        key_strindex: if rng.chance(10) { 9 } else { 0 },
    }
}

fn attributes(rng: &mut Rng, max: usize) -> Vec<KeyValue> {
    (0..rng.below(max + 1)).map(|_| attribute(rng)).collect()
}

fn exemplars(rng: &mut Rng) -> Vec<Exemplar> {
    if !rng.chance(20) {
        return Vec::new();
    }
    vec![Exemplar {
        filtered_attributes: attributes(rng, 2),
        time_unix_nano: 5,
        span_id: vec![1; 8],
        trace_id: vec![2; 16],
        value: Some(exemplar::Value::AsInt(3)),
    }]
}

fn time(rng: &mut Rng) -> u64 {
    if rng.chance(5) {
        0
    } else {
        1_000 + rng.below(4) as u64
    }
}

fn flags(rng: &mut Rng) -> u32 {
    if rng.chance(5) { 1 } else { 0 }
}

fn number_points(rng: &mut Rng) -> Vec<NumberDataPoint> {
    (0..rng.below(4))
        .map(|_| NumberDataPoint {
            attributes: attributes(rng, 3),
            start_time_unix_nano: rng.below(3) as u64 * 100,
            time_unix_nano: time(rng),
            exemplars: exemplars(rng),
            flags: flags(rng),
            value: match rng.below(5) {
                0 => None,
                1 => Some(number_data_point::Value::AsInt(rng.below(100) as i64 - 50)),
                _ => Some(number_data_point::Value::AsDouble(*rng.pick(&[
                    1.0,
                    2.5,
                    f64::NAN,
                    -3.0,
                ]))),
            },
        })
        .collect()
}

fn histogram_points(rng: &mut Rng) -> Vec<HistogramDataPoint> {
    (0..rng.below(3))
        .map(|_| {
            let bounds: Vec<f64> = match rng.below(4) {
                0 => Vec::new(),
                1 => vec![1.0, 0.5],
                _ => vec![1.0, 5.0, 10.0],
            };
            let counts: Vec<u64> = match rng.below(4) {
                0 => Vec::new(),
                1 => vec![1, 2],
                _ => vec![1, 2, 3, 4],
            };
            let total = counts.iter().sum::<u64>();
            HistogramDataPoint {
                attributes: attributes(rng, 3),
                start_time_unix_nano: 100,
                time_unix_nano: time(rng),
                count: if rng.chance(80) { total } else { total + 1 },
                sum: rng.chance(70).then_some(12.5),
                bucket_counts: counts,
                explicit_bounds: bounds,
                exemplars: exemplars(rng),
                flags: flags(rng),
                min: rng.chance(50).then_some(f64::NAN),
                max: rng.chance(50).then_some(9.0),
            }
        })
        .collect()
}

fn exponential_points(rng: &mut Rng) -> Vec<ExponentialHistogramDataPoint> {
    (0..rng.below(3))
        .map(|_| {
            let positive = rng.chance(70).then(|| Buckets {
                offset: *rng.pick(&[-3, 0, 7, i32::MIN]),
                bucket_counts: vec![1, 0, 2],
            });
            let negative = rng.chance(30).then(|| Buckets {
                offset: 1,
                bucket_counts: vec![4],
            });
            let buckets: u64 = [&positive, &negative]
                .iter()
                .filter_map(|side| side.as_ref())
                .flat_map(|side| side.bucket_counts.iter())
                .sum();
            ExponentialHistogramDataPoint {
                attributes: attributes(rng, 2),
                start_time_unix_nano: 100,
                time_unix_nano: time(rng),
                count: buckets + 2,
                sum: Some(3.0),
                scale: *rng.pick(&[0, 3, -10, 21, -1]),
                zero_count: 2,
                positive,
                negative,
                flags: flags(rng),
                exemplars: exemplars(rng),
                min: None,
                max: Some(8.0),
                zero_threshold: *rng.pick(&[0.0, 1e-9, -1.0]),
            }
        })
        .collect()
}

fn summary_points(rng: &mut Rng) -> Vec<SummaryDataPoint> {
    (0..rng.below(3))
        .map(|_| SummaryDataPoint {
            attributes: attributes(rng, 2),
            start_time_unix_nano: 100,
            time_unix_nano: time(rng),
            count: 4,
            sum: 10.0,
            quantile_values: vec![
                ValueAtQuantile {
                    quantile: 0.5,
                    value: 2.0,
                },
                ValueAtQuantile {
                    quantile: 0.99,
                    value: f64::NAN,
                },
            ],
            flags: flags(rng),
        })
        .collect()
}

fn metric(rng: &mut Rng) -> Metric {
    let temporality = *rng.pick(&[1, 2, 2, 2, 0, 7]);
    let data = match rng.below(7) {
        0 => None,
        1 => Some(Data::Gauge(Gauge {
            data_points: number_points(rng),
        })),
        2 | 3 => Some(Data::Sum(Sum {
            data_points: number_points(rng),
            aggregation_temporality: temporality,
            is_monotonic: rng.chance(60),
        })),
        4 => Some(Data::Histogram(Histogram {
            data_points: histogram_points(rng),
            aggregation_temporality: temporality,
        })),
        5 => Some(Data::ExponentialHistogram(ExponentialHistogram {
            data_points: exponential_points(rng),
            aggregation_temporality: temporality,
        })),
        _ => Some(Data::Summary(Summary {
            data_points: summary_points(rng),
        })),
    };
    Metric {
        name: rng
            .pick(&["requests", "latency", "", "inflight"])
            .to_string(),
        description: rng.pick(&["", "how many"]).to_string(),
        unit: rng.pick(&["", "1", "ms"]).to_string(),
        metadata: if rng.chance(10) {
            attributes(rng, 1)
        } else {
            Vec::new()
        },
        data,
    }
}

fn request(rng: &mut Rng) -> ExportMetricsServiceRequest {
    let resource_metrics = (0..1 + rng.below(3))
        .map(|_| ResourceMetrics {
            resource: rng.chance(90).then(|| Resource {
                attributes: vec![KeyValue {
                    key: "service.instance.id".into(),
                    value: any(any_value::Value::StringValue(format!("w{}", rng.below(3)))),
                    key_strindex: 0,
                }],
                dropped_attributes_count: rng.below(2) as u32,
                entity_refs: if rng.chance(10) {
                    vec![EntityRef {
                        schema_url: "s".into(),
                        r#type: "service".into(),
                        id_keys: vec!["service.name".into()],
                        description_keys: Vec::new(),
                    }]
                } else {
                    Vec::new()
                },
            }),
            scope_metrics: (0..rng.below(3))
                .map(|_| ScopeMetrics {
                    scope: rng.chance(80).then(|| InstrumentationScope {
                        name: rng.pick(&["app", ""]).to_string(),
                        version: rng.pick(&["1.0", ""]).to_string(),
                        attributes: attributes(rng, 1),
                        dropped_attributes_count: 0,
                    }),
                    metrics: (0..rng.below(4)).map(|_| metric(rng)).collect(),
                    schema_url: rng.pick(&["", "https://example"]).to_string(),
                })
                .collect(),
            schema_url: String::new(),
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

/// prost's decode with what fanin does not read set aside, and attribute values in the one
/// form the view can express (a string-table reference and a missing value read as empty).
fn normalized(mut request: ExportMetricsServiceRequest) -> ExportMetricsServiceRequest {
    fn attributes(pairs: &mut [KeyValue]) {
        for pair in pairs {
            pair.key_strindex = 0;
            let value = pair.value.take().and_then(|value| value.value);
            pair.value = Some(AnyValue {
                value: match value {
                    Some(any_value::Value::StringValueStrindex(_)) => None,
                    other => other,
                },
            });
        }
    }
    for resource in &mut request.resource_metrics {
        resource.schema_url.clear();
        let mut kept = resource.resource.take().unwrap_or_default();
        kept.dropped_attributes_count = 0;
        kept.entity_refs.clear();
        attributes(&mut kept.attributes);
        resource.resource = Some(kept);
        for scope in &mut resource.scope_metrics {
            scope.schema_url.clear();
            let mut kept = scope.scope.take().unwrap_or_default();
            kept.dropped_attributes_count = 0;
            attributes(&mut kept.attributes);
            scope.scope = Some(kept);
            for metric in &mut scope.metrics {
                metric.metadata.clear();
                match &mut metric.data {
                    None => {}
                    Some(Data::Gauge(gauge)) => gauge.data_points.iter_mut().for_each(|point| {
                        point.exemplars.clear();
                        attributes(&mut point.attributes);
                    }),
                    Some(Data::Sum(sum)) => sum.data_points.iter_mut().for_each(|point| {
                        point.exemplars.clear();
                        attributes(&mut point.attributes);
                    }),
                    Some(Data::Histogram(histogram)) => {
                        histogram.data_points.iter_mut().for_each(|point| {
                            point.exemplars.clear();
                            attributes(&mut point.attributes);
                        })
                    }
                    Some(Data::ExponentialHistogram(histogram)) => {
                        histogram.data_points.iter_mut().for_each(|point| {
                            point.exemplars.clear();
                            attributes(&mut point.attributes);
                        })
                    }
                    Some(Data::Summary(summary)) => summary
                        .data_points
                        .iter_mut()
                        .for_each(|point| attributes(&mut point.attributes)),
                }
            }
        }
    }
    request
}

/// The view rebuilt as a prost message, in [`normalized`]'s form.
fn rebuilt(view: &view::Request<'_>) -> ExportMetricsServiceRequest {
    let pairs = |range: &std::ops::Range<usize>| -> Vec<KeyValue> {
        view.attributes[range.clone()]
            .iter()
            .map(|(key, value)| KeyValue {
                key: (*key).to_string(),
                value: Some(AnyValue {
                    value: match value.to_owned_value() {
                        fanin::model::AttrValue::Empty => None,
                        fanin::model::AttrValue::Str(s) => Some(any_value::Value::StringValue(s)),
                        fanin::model::AttrValue::Bool(b) => Some(any_value::Value::BoolValue(b)),
                        fanin::model::AttrValue::Int(i) => Some(any_value::Value::IntValue(i)),
                        fanin::model::AttrValue::Double(d) => {
                            Some(any_value::Value::DoubleValue(d))
                        }
                        fanin::model::AttrValue::Bytes(b) => Some(any_value::Value::BytesValue(b)),
                        other => panic!("the reader never yields {other:?}"),
                    },
                }),
                key_strindex: 0,
            })
            .collect()
    };
    let counts = |range: &std::ops::Range<usize>| view.counts[range.clone()].to_vec();
    let resource_metrics = view
        .resources
        .iter()
        .map(|resource| ResourceMetrics {
            resource: Some(Resource {
                attributes: pairs(&resource.attributes),
                ..Default::default()
            }),
            scope_metrics: view.scopes[resource.scopes.clone()]
                .iter()
                .map(|scope| ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: scope.name.to_string(),
                        version: scope.version.to_string(),
                        attributes: pairs(&scope.attributes),
                        dropped_attributes_count: 0,
                    }),
                    metrics: view.metrics[scope.metrics.clone()]
                        .iter()
                        .map(|metric| Metric {
                            name: metric.name.to_string(),
                            description: metric.description.to_string(),
                            unit: metric.unit.to_string(),
                            metadata: Vec::new(),
                            data: metric.data.as_ref().map(|data| {
                                let points = &view.points[data.points.clone()];
                                rebuilt_data(view, data, points, &pairs, &counts)
                            }),
                        })
                        .collect(),
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: String::new(),
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

fn rebuilt_data(
    view: &view::Request<'_>,
    data: &view::DataView,
    points: &[view::PointView],
    pairs: &dyn Fn(&std::ops::Range<usize>) -> Vec<KeyValue>,
    counts: &dyn Fn(&std::ops::Range<usize>) -> Vec<u64>,
) -> Data {
    use fanin::model::Kind;
    match data.kind {
        Kind::Gauge | Kind::Sum => {
            let data_points = points
                .iter()
                .map(|point| NumberDataPoint {
                    attributes: pairs(&point.attributes),
                    start_time_unix_nano: point.start,
                    time_unix_nano: point.time,
                    exemplars: Vec::new(),
                    flags: point.flags,
                    value: match point.value {
                        ValueView::Missing => None,
                        ValueView::Double(value) => Some(number_data_point::Value::AsDouble(value)),
                        ValueView::Int(value) => Some(number_data_point::Value::AsInt(value)),
                        ref other => panic!("a number point holds {other:?}"),
                    },
                })
                .collect();
            if data.kind == Kind::Gauge {
                Data::Gauge(Gauge { data_points })
            } else {
                Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: data.temporality,
                    is_monotonic: data.monotonic,
                })
            }
        }
        Kind::Histogram => Data::Histogram(Histogram {
            aggregation_temporality: data.temporality,
            data_points: points
                .iter()
                .map(|point| {
                    let ValueView::Histogram(histogram) = &point.value else {
                        panic!("a histogram point holds {:?}", point.value)
                    };
                    HistogramDataPoint {
                        attributes: pairs(&point.attributes),
                        start_time_unix_nano: point.start,
                        time_unix_nano: point.time,
                        count: histogram.count,
                        sum: histogram.sum,
                        bucket_counts: counts(&histogram.bucket_counts),
                        explicit_bounds: view.bounds[histogram.bounds.clone()].to_vec(),
                        exemplars: Vec::new(),
                        flags: point.flags,
                        min: histogram.min,
                        max: histogram.max,
                    }
                })
                .collect(),
        }),
        Kind::ExponentialHistogram => Data::ExponentialHistogram(ExponentialHistogram {
            aggregation_temporality: data.temporality,
            data_points: points
                .iter()
                .map(|point| {
                    let ValueView::Exponential(histogram) = &point.value else {
                        panic!("an exponential point holds {:?}", point.value)
                    };
                    let side = |side: &Option<view::BucketsView>| {
                        side.as_ref().map(|side| Buckets {
                            offset: side.offset,
                            bucket_counts: counts(&side.counts),
                        })
                    };
                    ExponentialHistogramDataPoint {
                        attributes: pairs(&point.attributes),
                        start_time_unix_nano: point.start,
                        time_unix_nano: point.time,
                        count: histogram.count,
                        sum: histogram.sum,
                        scale: histogram.scale,
                        zero_count: histogram.zero_count,
                        positive: side(&histogram.positive),
                        negative: side(&histogram.negative),
                        flags: point.flags,
                        exemplars: Vec::new(),
                        min: histogram.min,
                        max: histogram.max,
                        zero_threshold: histogram.zero_threshold,
                    }
                })
                .collect(),
        }),
        Kind::Summary => Data::Summary(Summary {
            data_points: points
                .iter()
                .map(|point| {
                    let ValueView::Summary(summary) = &point.value else {
                        panic!("a summary point holds {:?}", point.value)
                    };
                    SummaryDataPoint {
                        attributes: pairs(&point.attributes),
                        start_time_unix_nano: point.start,
                        time_unix_nano: point.time,
                        count: summary.count,
                        sum: summary.sum,
                        quantile_values: view.quantiles[summary.quantiles.clone()]
                            .iter()
                            .map(|(quantile, value)| ValueAtQuantile {
                                quantile: *quantile,
                                value: *value,
                            })
                            .collect(),
                        flags: point.flags,
                    }
                })
                .collect(),
        }),
    }
}

/// Compares by encoding: prost messages with NaN are never `==`, their bytes are.
#[track_caller]
fn assert_same_reading(bytes: &[u8], view: &view::Request<'_>) {
    let decoded = ExportMetricsServiceRequest::decode(bytes)
        .unwrap_or_else(|error| panic!("the reader accepted what prost refuses: {error}"));
    // The view prost's message gives (the fallback path's) reads the same too.
    let nested = view::nested_values(&decoded);
    let of_message = rebuilt(&view::Request::of_message(&decoded, &nested));
    let expected = normalized(decoded);
    let got = rebuilt(view);
    assert_eq!(
        got.encode_to_vec(),
        expected.encode_to_vec(),
        "\nreader: {got:#?}\nprost: {expected:#?}"
    );
    assert_eq!(
        of_message.encode_to_vec(),
        expected.encode_to_vec(),
        "\nof_message: {of_message:#?}\nprost: {expected:#?}"
    );
}

fn store() -> Store {
    let instance_attributes =
        InstanceAttributes::new(["service.instance.id"]).expect("literal glob");
    Store::new(StoreSettings {
        limits: fanin::config::Limits {
            max_series: NonZeroUsize::new(1_000).expect("non-zero"),
            ..default_limits()
        },
        instance_attributes,
        collision_policy: CollisionPolicy::Report,
        local_host: None,
        verify_unix_pids: true,
        clock: Default::default(),
    })
}

const WRITER: Writer = Writer {
    transport: Transport::Http,
    peer: None,
    pid: None,
};

/// Everything a query can see of a store, in a stable order.
fn contents(store: &Store) -> Vec<String> {
    let mut lines: Vec<String> = store
        .all_streams()
        .iter()
        .map(|view| format!("{:?} {:?} {:?}", view.instance, view.key, view.state))
        .collect();
    lines.extend(store.type_conflicts().iter().map(|conflict| {
        format!(
            "{:?} {} {}",
            conflict.metric, conflict.first, conflict.conflicting
        )
    }));
    lines.extend(
        store
            .metric_identities()
            .iter()
            .map(|identity| format!("{:?} {:?}", identity.metric, identity.description)),
    );
    lines.sort();
    lines
}

fn counts_of(outcome: &Outcome) -> (u64, u64, u64, Option<i64>) {
    (
        outcome.accepted,
        outcome.rejected_total(),
        outcome.dropped_total(),
        outcome.partial_success().map(|(rejected, _)| rejected),
    )
}

/// Reads `bytes` with `store`'s known blocks, checks the reading against prost's, stores it
/// and learns its new blocks, as `receiver::receive_protobuf` does. Also returns how many of
/// its points had a known block.
#[track_caller]
fn read_known_and_store(store: &Store, bytes: &[u8]) -> (Outcome, usize) {
    let known = store.known_blocks();
    let view =
        wire::parse_known(bytes, &known).unwrap_or_else(|declined| panic!("declined {declined:?}"));
    assert_same_reading(bytes, &view);
    let hits = known_points(&view);
    let mut new_blocks = NewBlocks::for_table(&known);
    let outcome = store_view(store, &view, WRITER, Some(&mut new_blocks));
    drop(view);
    drop(known);
    store.learn_blocks(new_blocks);
    (outcome, hits)
}

fn known_points(view: &view::Request<'_>) -> usize {
    view.points
        .iter()
        .filter(|point| matches!(point.block, view::Block::Known(_)))
        .count()
}

#[test]
fn generated_requests_read_and_store_as_prost_does() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let (mut points, mut known) = (0, 0);
    for round in 0..400 {
        let (by_prost, by_view, by_known) = (store(), store(), store());
        // Requests into the same stores: later ones find existing streams, and with known
        // blocks the first one's repeat finds every block it can.
        let first = request(&mut rng);
        let requests = [first.clone(), first, request(&mut rng), request(&mut rng)];
        for request in requests {
            let bytes = request.encode_to_vec();
            let view = wire::parse(&bytes)
                .unwrap_or_else(|declined| panic!("round {round}: declined {declined:?}"));
            assert_same_reading(&bytes, &view);

            let expected = store_message(&by_prost, &request, WRITER);
            let got = store_view(&by_view, &view, WRITER, None);
            assert_eq!(counts_of(&got), counts_of(&expected), "round {round}");
            let (got, hits) = read_known_and_store(&by_known, &bytes);
            assert_eq!(
                counts_of(&got),
                counts_of(&expected),
                "round {round}, known"
            );
            points += view.points.len();
            known += hits;
        }
        assert_eq!(contents(&by_view), contents(&by_prost), "round {round}");
        assert_eq!(contents(&by_known), contents(&by_prost), "round {round}");
        assert_eq!(by_view.stream_count(), by_prost.stream_count());
        assert_eq!(by_known.stream_count(), by_prost.stream_count());
        assert_eq!(by_view.instance_count(), by_prost.instance_count());
    }
    // Known blocks must have stood in for many points, or the second reading proves nothing.
    // (Most generated points have no attributes or are refused, and teach nothing.)
    assert!(known > 300, "{known} of {points} points had a known block");
}

/// Every byte value, for mutations.
const ALL_BYTES: [u8; 256] = {
    let mut all = [0u8; 256];
    let mut byte = 0;
    while byte < 256 {
        all[byte] = byte as u8;
        byte += 1;
    }
    all
};

#[test]
fn corrupted_requests_are_read_as_prost_reads_them_or_declined() {
    let mut rng = Rng(0x0bad_cafe_0000_0042);
    let (mut both_accept, mut both_refuse, mut declined_for_prost) = (0, 0, 0);
    let mut known_points_read = 0;
    for _ in 0..500 {
        let bytes = request(&mut rng).encode_to_vec();
        // The intact request's blocks are known: a corrupted copy reads its intact blocks
        // from there, and only the bytes that changed are read again.
        let learnt = store();
        read_known_and_store(&learnt, &bytes);
        let known = learnt.known_blocks();
        for _ in 0..20 {
            let corrupted = mutate(&bytes, &mut rng, &ALL_BYTES);
            let prost = ExportMetricsServiceRequest::decode(&corrupted[..]);
            let with_known = wire::parse_known(&corrupted, &known);
            assert_eq!(
                with_known.as_ref().err(),
                wire::parse(&corrupted).as_ref().err(),
                "known blocks change what is declined: {corrupted:?}"
            );
            if let Ok(view) = &with_known {
                assert_same_reading(&corrupted, view);
                known_points_read += known_points(view);
            }
            match (with_known, prost) {
                (Ok(view), Ok(_)) => {
                    assert_same_reading(&corrupted, &view);
                    both_accept += 1;
                }
                (Ok(_), Err(error)) => {
                    panic!("the reader accepted what prost refuses ({error}): {corrupted:?}")
                }
                (Err(_), Err(_)) => both_refuse += 1,
                (Err(_), Ok(_)) => declined_for_prost += 1,
            }
        }
    }
    // Both outcomes must have been exercised, or the test proves nothing.
    assert!(both_accept > 500, "both accepted only {both_accept}");
    assert!(both_refuse > 500, "both refused only {both_refuse}");
    assert!(
        known_points_read > 500,
        "only {known_points_read} points read a known block"
    );
    eprintln!("accepted {both_accept}, refused {both_refuse}, left to prost {declined_for_prost}");
}

// Hand-made encodings.

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | u32::from(wire)), out);
}

fn len_field(field: u32, body: &[u8], out: &mut Vec<u8>) {
    key(field, 2, out);
    varint(body.len() as u64, out);
    out.extend_from_slice(body);
}

fn fixed_field(field: u32, value: u64, out: &mut Vec<u8>) {
    key(field, 1, out);
    out.extend_from_slice(&value.to_le_bytes());
}

/// A request around one metric body, `metric` already encoded.
fn around_metric(metric: &[u8]) -> Vec<u8> {
    let mut scope_metrics = Vec::new();
    len_field(2, metric, &mut scope_metrics);
    let mut resource_metrics = Vec::new();
    len_field(2, &scope_metrics, &mut resource_metrics);
    let mut request = Vec::new();
    len_field(1, &resource_metrics, &mut request);
    request
}

fn histogram_metric(point: &[u8]) -> Vec<u8> {
    let mut histogram = Vec::new();
    len_field(1, point, &mut histogram);
    key(2, 0, &mut histogram);
    varint(2, &mut histogram);
    let mut metric = Vec::new();
    len_field(1, b"h", &mut metric);
    len_field(9, &histogram, &mut metric);
    metric
}

#[test]
fn unpacked_repeated_fields_and_unknown_fields_read_as_prost_reads_them() {
    let mut point = Vec::new();
    fixed_field(3, 1_000, &mut point); // time
    fixed_field(4, 3, &mut point); // count
    // bucket_counts: one packed run of two, then one unpacked element.
    let mut packed = Vec::new();
    packed.extend_from_slice(&1u64.to_le_bytes());
    packed.extend_from_slice(&1u64.to_le_bytes());
    len_field(6, &packed, &mut point);
    fixed_field(6, 1, &mut point);
    // explicit_bounds unpacked.
    fixed_field(7, 1.0f64.to_bits(), &mut point);
    fixed_field(7, 2.0f64.to_bits(), &mut point);
    // Unknown fields of every wire type prost skips.
    key(99, 0, &mut point);
    varint(u64::MAX, &mut point);
    fixed_field(98, 7, &mut point);
    len_field(97, b"ignored", &mut point);
    key(96, 5, &mut point);
    point.extend_from_slice(&[1, 2, 3, 4]);
    // A ten-byte varint for flags (its value truncated to 32 bits: 0).
    key(10, 0, &mut point);
    point.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    // Time sent again, later: the last one wins.
    fixed_field(3, 2_000, &mut point);
    let bytes = around_metric(&histogram_metric(&point));
    let view = wire::parse(&bytes).expect("read in place");
    assert_same_reading(&bytes, &view);
    assert_eq!(view.counts, vec![1, 1, 1]);
    assert_eq!(view.bounds, vec![1.0, 2.0]);
    assert_eq!(view.points[0].time, 2_000);
}

/// A gauge of one point with `point` as its body.
fn gauge_metric(point: &[u8]) -> Vec<u8> {
    let mut gauge = Vec::new();
    len_field(1, point, &mut gauge);
    let mut metric = Vec::new();
    len_field(1, b"g", &mut metric);
    len_field(5, &gauge, &mut metric);
    metric
}

fn string_pair(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut any_value = Vec::new();
    len_field(1, value, &mut any_value);
    let mut pair = Vec::new();
    len_field(1, key, &mut pair);
    len_field(2, &any_value, &mut pair);
    pair
}

#[test]
fn attributes_in_two_runs_or_with_a_long_key_read_the_same_with_known_blocks() {
    let (route, method) = (string_pair(b"route", b"/a"), string_pair(b"method", b"GET"));
    // One run: its block is learnt, then found.
    let mut one_run = Vec::new();
    fixed_field(3, 1_000, &mut one_run);
    len_field(7, &route, &mut one_run);
    len_field(7, &method, &mut one_run);
    fixed_field(4, 1.0f64.to_bits(), &mut one_run);
    let store = store();
    let bytes = around_metric(&gauge_metric(&one_run));
    assert_eq!(read_known_and_store(&store, &bytes).1, 0);
    assert_eq!(read_known_and_store(&store, &bytes).1, 1);

    // The same pairs split by the time field: the first run is the known block's first
    // half only, so nothing is found, and the point has no block to learn.
    let mut split = Vec::new();
    len_field(7, &route, &mut split);
    fixed_field(3, 2_000, &mut split);
    len_field(7, &method, &mut split);
    fixed_field(4, 2.0f64.to_bits(), &mut split);
    let bytes = around_metric(&gauge_metric(&split));
    let known = store.known_blocks();
    let view = wire::parse_known(&bytes, &known).expect("read in place");
    assert_same_reading(&bytes, &view);
    assert!(matches!(view.points[0].block, view::Block::None));
    assert_eq!(view.attributes.len(), 2);
    drop(view);
    drop(known);

    // The known run after a first key written in two bytes (field 7, wire type 2, as a
    // longer varint than it needs): the bytes after the key are the known block's.
    let mut long_key = Vec::new();
    fixed_field(3, 3_000, &mut long_key);
    long_key.extend_from_slice(&[0xba, 0x00]);
    varint(route.len() as u64, &mut long_key);
    long_key.extend_from_slice(&route);
    len_field(7, &method, &mut long_key);
    fixed_field(4, 3.0f64.to_bits(), &mut long_key);
    let bytes = around_metric(&gauge_metric(&long_key));
    let (outcome, hits) = read_known_and_store(&store, &bytes);
    assert_eq!((outcome.accepted, hits), (1, 1));
    assert_eq!(store.stream_count(), 1, "the same stream, found by its set");
}

#[test]
fn only_bodies_up_to_a_mebibyte_are_read_with_known_blocks() {
    let mut point = Vec::new();
    fixed_field(3, 1_000, &mut point);
    len_field(7, &string_pair(b"route", b"/a"), &mut point);
    fixed_field(4, 1.0f64.to_bits(), &mut point);
    let small = around_metric(&gauge_metric(&point));
    // The same request with an unknown field of 1 MiB in front: prost and the reader skip it.
    let mut large = Vec::new();
    len_field(99, &vec![0; 1 << 20], &mut large);
    large.extend_from_slice(&small);
    assert!(large.len() > fanin::receiver::KNOWN_BLOCKS_BODY_BYTES);

    let store = store();
    let outcome = fanin::receiver::receive_protobuf(&store, &large, WRITER).expect("read");
    assert_eq!(outcome.accepted, 1);
    assert!(
        store.known_blocks().is_empty(),
        "a large body teaches nothing"
    );
    fanin::receiver::receive_protobuf(&store, &small, WRITER).expect("read");
    assert_eq!(store.known_blocks().len(), 1);
}

#[test]
fn number_value_sent_twice_keeps_the_last() {
    let mut point = Vec::new();
    fixed_field(3, 1_000, &mut point);
    fixed_field(4, 2.5f64.to_bits(), &mut point); // as_double
    fixed_field(6, 7, &mut point); // as_int
    let mut gauge = Vec::new();
    len_field(1, &point, &mut gauge);
    let mut metric = Vec::new();
    len_field(1, b"g", &mut metric);
    len_field(5, &gauge, &mut metric);
    let bytes = around_metric(&metric);
    let view = wire::parse(&bytes).expect("read in place");
    assert_same_reading(&bytes, &view);
    assert!(matches!(view.points[0].value, ValueView::Int(7)));
}

#[test]
fn what_prost_merges_or_refuses_is_left_to_prost() {
    let mut gauge = Vec::new();
    len_field(1, &[], &mut gauge);
    // The data member twice: prost merges the two gauges.
    let mut metric = Vec::new();
    len_field(5, &gauge, &mut metric);
    len_field(5, &gauge, &mut metric);
    let bytes = around_metric(&metric);
    assert!(ExportMetricsServiceRequest::decode(&bytes[..]).is_ok());
    assert_eq!(
        wire::parse(&bytes).err(),
        Some(Declined("metric data member sent twice"))
    );

    // An array attribute value.
    let mut array = Vec::new();
    len_field(5, &[], &mut array);
    let mut pair = Vec::new();
    len_field(1, b"k", &mut pair);
    len_field(2, &array, &mut pair);
    let mut resource = Vec::new();
    len_field(1, &pair, &mut resource);
    let mut resource_metrics = Vec::new();
    len_field(1, &resource, &mut resource_metrics);
    let mut bytes = Vec::new();
    len_field(1, &resource_metrics, &mut bytes);
    assert!(ExportMetricsServiceRequest::decode(&bytes[..]).is_ok());
    assert!(wire::parse(&bytes).is_err());

    // A metric name that is not UTF-8: prost refuses.
    let mut metric = Vec::new();
    len_field(1, &[0xff, 0xfe], &mut metric);
    let bytes = around_metric(&metric);
    assert!(ExportMetricsServiceRequest::decode(&bytes[..]).is_err());
    assert!(wire::parse(&bytes).is_err());

    // A group in an unknown field: prost skips it by its own rules.
    let mut metric = Vec::new();
    key(50, 3, &mut metric);
    key(50, 4, &mut metric);
    let bytes = around_metric(&metric);
    assert!(ExportMetricsServiceRequest::decode(&bytes[..]).is_ok());
    assert!(wire::parse(&bytes).is_err());
}

/// The limits of the built-in default config.
fn default_limits() -> fanin::config::Limits {
    fanin::Config::from_yaml_with_env(fanin::config::DEFAULT_YAML, &|_| None)
        .map(|config| config.limits)
        .unwrap_or_else(|error| panic!("the default config parses: {error}"))
}
