//! Aggregation rules as data: each test is a line of contributions and an expected result.

use super::*;
use crate::model::{AttrValue, StreamValue};

/// Aggregates `contributions` in one go, each found by its pairs.
fn space(
    contributions: &[Contribution<'_>],
    shape: Shape,
    agg: Agg,
    by: Option<&[String]>,
) -> Result<Vec<Group>, AggregateError> {
    let mut space = Space::new(shape, agg, by)?;
    for contribution in contributions {
        space.add(contribution, None);
    }
    Ok(space.finish())
}

fn attrs(pairs: &[(&str, &str)]) -> Attributes {
    Attributes::new(
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), AttrValue::Str(value.to_string())))
            .collect(),
    )
}

/// `(instance, live, value)` numbers, all in one group.
#[track_caller]
fn check(values: &[(usize, bool, f64)], shape: Shape, agg: Agg, expected: f64, instances: u64) {
    let stored: Vec<StreamValue> = values
        .iter()
        .map(|v| StreamValue::Number(Number::Double(v.2)))
        .collect();
    let (resource, route) = (Attributes::default(), attrs(&[("route", "/a")]));
    let contributions: Vec<Contribution> = values
        .iter()
        .zip(&stored)
        .map(|(&(instance, live, _), value)| Contribution {
            resource: &resource,
            attributes: &route,
            source: Source::Instance(instance),
            live,
            value: value.as_value_ref(),
        })
        .collect();
    let groups = space(&contributions, shape, agg, None).expect("numeric aggregation");
    assert_eq!(groups.len(), 1);
    match groups[0].value {
        Aggregated::Number(total) => assert_eq!(total.as_f64(), expected),
        ref other => panic!("not a number: {other:?}"),
    }
    assert_eq!(groups[0].instances, instances);
}

/// Integer values of live instances, summed (or counted) into one group.
#[track_caller]
fn check_exact(values: &[Number], agg: Agg, expected: Total) {
    let stored: Vec<StreamValue> = values.iter().copied().map(StreamValue::Number).collect();
    let attributes = Attributes::default();
    let contributions: Vec<Contribution> = stored
        .iter()
        .enumerate()
        .map(|(index, value)| Contribution {
            resource: &attributes,
            attributes: &attributes,
            source: Source::Instance(index),
            live: true,
            value: value.as_value_ref(),
        })
        .collect();
    let groups = space(&contributions, Shape::Counter, agg, None).expect("numeric");
    assert_eq!(groups[0].value, Aggregated::Number(expected));
}

#[test]
fn integers_aggregate_exactly() {
    let big = (1i64 << 53) + 1;
    check_exact(
        &[Number::Int(big), Number::Int(2)],
        Agg::Sum,
        Total::Int(i128::from(big) + 2),
    );
    check_exact(
        &[Number::Int(big), Number::Int(2)],
        Agg::Max,
        Total::Int(i128::from(big)),
    );
    check_exact(
        &[Number::Int(i64::MAX); 2],
        Agg::Sum,
        Total::Int(2 * i128::from(i64::MAX)),
    );
    check_exact(&[Number::Int(3); 4], Agg::Count, Total::Int(4));
    check_exact(
        &[Number::Int(3), Number::Double(0.5)],
        Agg::Sum,
        Total::Double(3.5),
    );
}

const INFLIGHT: [(usize, bool, f64); 4] = [
    (0, true, 128.0),
    (1, true, 128.0),
    (2, true, 128.0),
    (3, true, 128.0),
];

#[test]
fn sum_of_inflight_is_512_and_max_is_128() {
    check(&INFLIGHT, Shape::Current, Agg::Sum, 512.0, 4);
    check(&INFLIGHT, Shape::Current, Agg::Max, 128.0, 4);
    check(&INFLIGHT, Shape::Current, Agg::Count, 4.0, 4);
    check(&INFLIGHT, Shape::Current, Agg::Avg, 128.0, 4);
}

#[test]
fn counters_keep_retired_instances() {
    check(
        &[(0, true, 5.0), (1, false, 7.0)],
        Shape::Counter,
        Agg::Sum,
        12.0,
        2,
    );
}

#[test]
fn gauges_drop_retired_instances() {
    check(
        &[(0, true, 5.0), (1, false, 7.0)],
        Shape::Current,
        Agg::Sum,
        5.0,
        1,
    );
}

#[test]
fn max_min_avg_look_at_live_values_only() {
    let values = [(0, true, 5.0), (1, true, 1.0), (2, false, 100.0)];
    check(&values, Shape::Counter, Agg::Max, 5.0, 2);
    check(&values, Shape::Counter, Agg::Min, 1.0, 2);
    check(&values, Shape::Counter, Agg::Avg, 3.0, 2);
}

#[test]
fn one_instance_with_two_streams_counts_once() {
    // Contributions of one instance are adjacent, as a store snapshot lists them.
    check(
        &[(0, true, 1.0), (0, true, 2.0)],
        Shape::Counter,
        Agg::Sum,
        3.0,
        1,
    );
}

#[test]
fn by_groups_on_a_subset() {
    let values = [
        StreamValue::Number(Number::Int(1)),
        StreamValue::Number(Number::Int(2)),
        StreamValue::Number(Number::Int(4)),
    ];
    let resource = attrs(&[("service.name", "app")]);
    let points = [
        attrs(&[("route", "/a"), ("method", "GET")]),
        attrs(&[("route", "/a"), ("method", "POST")]),
        attrs(&[("route", "/b"), ("method", "GET")]),
    ];
    let contributions = vec![
        Contribution {
            resource: &resource,
            attributes: &points[0],
            source: Source::Instance(0),
            live: true,
            value: values[0].as_value_ref(),
        },
        Contribution {
            resource: &resource,
            attributes: &points[1],
            source: Source::Instance(1),
            live: true,
            value: values[1].as_value_ref(),
        },
        Contribution {
            resource: &resource,
            attributes: &points[2],
            source: Source::Retired { instances: 3 },
            live: false,
            value: values[2].as_value_ref(),
        },
    ];
    let by = ["route".to_string()];
    let groups = space(&contributions, Shape::Counter, Agg::Sum, Some(&by)).expect("sum");
    let got: Vec<_> = groups
        .iter()
        .map(|group| {
            (
                group.attributes.clone(),
                group.value.clone(),
                group.instances,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                attrs(&[("route", "/a")]),
                Aggregated::Number(Total::Int(3)),
                2
            ),
            (
                attrs(&[("route", "/b")]),
                Aggregated::Number(Total::Int(4)),
                3
            ),
        ]
    );
    let everything = space(&contributions, Shape::Counter, Agg::Sum, Some(&[])).expect("sum");
    assert_eq!(everything.len(), 1);
    assert_eq!(everything[0].value, Aggregated::Number(Total::Int(7)));
    // Without `by`, a group is the resource and point attributes together.
    let all = space(&contributions, Shape::Counter, Agg::Sum, None).expect("sum");
    assert_eq!(all.len(), 3);
    assert_eq!(
        all[0].attributes,
        attrs(&[("method", "GET"), ("route", "/a"), ("service.name", "app")])
    );
}

#[test]
fn a_point_attribute_hides_the_resource_attribute_of_its_key() {
    let values = [
        StreamValue::Number(Number::Int(1)),
        StreamValue::Number(Number::Int(2)),
    ];
    let resource = attrs(&[("route", "/resource"), ("service.name", "app")]);
    let (point, bare) = (attrs(&[("route", "/a")]), Attributes::default());
    let contribution = |attributes, value| Contribution {
        resource: &resource,
        attributes,
        source: Source::Instance(0),
        live: true,
        value,
    };
    let groups = space(
        &[
            contribution(&point, values[0].as_value_ref()),
            contribution(&bare, values[1].as_value_ref()),
        ],
        Shape::Current,
        Agg::Sum,
        None,
    )
    .expect("sum");
    let keys: Vec<&Attributes> = groups.iter().map(|group| &group.attributes).collect();
    assert_eq!(
        keys,
        [
            &attrs(&[("route", "/a"), ("service.name", "app")]),
            &attrs(&[("route", "/resource"), ("service.name", "app")]),
        ]
    );
}

fn histogram(bounds: &[f64], counts: &[u64]) -> StreamValue {
    StreamValue::Histogram(Histogram {
        count: counts.iter().sum(),
        sum: Some(counts.iter().sum::<u64>() as f64),
        min: Some(0.0),
        max: Some(10.0),
        bounds: bounds.to_vec(),
        bucket_counts: counts.to_vec(),
    })
}

fn merge(values: &[StreamValue], shape: Shape) -> Aggregated {
    let empty = Attributes::default();
    let contributions: Vec<Contribution> = values
        .iter()
        .enumerate()
        .map(|(index, value)| Contribution {
            resource: &empty,
            attributes: &empty,
            source: Source::Instance(index),
            live: index % 2 == 0,
            value: value.as_value_ref(),
        })
        .collect();
    let groups = space(&contributions, shape, Agg::Sum, None).expect("merge");
    groups[0].value.clone()
}

#[test]
fn histograms_merge_bucket_wise_including_retired() {
    let merged = merge(
        &[
            histogram(&[1.0, 5.0], &[1, 2, 3]),
            histogram(&[1.0, 5.0], &[4, 0, 1]),
        ],
        Shape::Histogram,
    );
    match merged {
        Aggregated::Histogram {
            histogram,
            bounds_differ,
        } => {
            assert!(!bounds_differ);
            assert_eq!(histogram.bucket_counts, vec![5, 2, 4]);
            assert_eq!(histogram.count, 11);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn histograms_with_other_bounds_say_so() {
    let merged = merge(
        &[histogram(&[1.0], &[1, 2]), histogram(&[2.0], &[4, 1])],
        Shape::Histogram,
    );
    match merged {
        Aggregated::Histogram {
            histogram,
            bounds_differ,
        } => {
            assert!(bounds_differ);
            assert_eq!(histogram.count, 8);
            assert_eq!(histogram.sum, Some(8.0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn exponential_histograms_at_scales_3_and_1_merge_exactly() {
    let exp = |scale, counts: &[u64]| {
        StreamValue::ExpHistogram(ExpHistogram {
            count: counts.iter().sum(),
            sum: Some(1.0),
            min: None,
            max: None,
            scale,
            zero_count: 0,
            zero_threshold: 0.0,
            positive: ExpBuckets {
                offset: 0,
                counts: counts.to_vec(),
            },
            negative: ExpBuckets::default(),
        })
    };
    let merged = merge(
        &[exp(3, &[1, 1, 1, 1, 1, 1, 1, 1]), exp(1, &[10, 20])],
        Shape::ExpHistogram,
    );
    match merged {
        Aggregated::ExpHistogram(histogram) => {
            assert_eq!(histogram.scale, 1);
            assert_eq!(histogram.positive.counts, vec![14, 24]);
            assert_eq!(histogram.count, 38);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_sum_is_defined_for_histograms() {
    let values = [histogram(&[1.0], &[1, 1])];
    let empty = Attributes::default();
    let contributions = vec![Contribution {
        resource: &empty,
        attributes: &empty,
        source: Source::Instance(0),
        live: true,
        value: values[0].as_value_ref(),
    }];
    let error =
        space(&contributions, Shape::Histogram, Agg::Max, None).expect_err("max of histogram");
    assert_eq!(
        error.to_string(),
        "agg=max is defined for numeric metrics only; histogram metrics merge with agg=sum"
    );
}

#[test]
fn huge_counts_saturate_instead_of_overflowing() {
    let huge = |bounds: &[f64]| {
        StreamValue::Histogram(Histogram {
            count: u64::MAX,
            sum: None,
            min: None,
            max: None,
            bounds: bounds.to_vec(),
            bucket_counts: vec![u64::MAX; bounds.len() + 1],
        })
    };
    match merge(&[huge(&[1.0]), huge(&[2.0])], Shape::Histogram) {
        Aggregated::Histogram {
            histogram,
            bounds_differ,
        } => {
            assert!(bounds_differ);
            assert_eq!(histogram.count, u64::MAX);
        }
        other => panic!("{other:?}"),
    }
    let summary = StreamValue::Summary(crate::model::Summary {
        count: u64::MAX,
        sum: 1.0,
        quantiles: Vec::new(),
    });
    let merged = merge(&[summary.clone(), summary], Shape::Summary);
    assert_eq!(
        merged,
        Aggregated::Summary {
            count: u64::MAX,
            sum: 2.0
        }
    );
}
