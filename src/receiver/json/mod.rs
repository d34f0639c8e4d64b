//! OTLP/JSON to the protobuf message types, without losing data quietly.
//!
//! The serde support in `opentelemetry-proto` turns any error inside a oneof into "absent",
//! so one unexpected spelling silently drops a metric's points (an `asInt` written as a JSON
//! number where the derive expects a string, say, loses the point without an error). This
//! decoder walks the JSON tree itself and accepts every spelling the
//! proto3 JSON mapping and OTLP allow:
//!
//! - lowerCamelCase and snake_case keys (both at once is an error: which one is meant?);
//! - 64- and 32-bit integers as JSON numbers or decimal strings;
//! - doubles as numbers or strings, including `"NaN"`, `"Infinity"`, `"-Infinity"`;
//! - enums as integers or as their names;
//! - `null` for any field, meaning "not set".
//!
//! Unknown keys are ignored, as OTLP requires. Anything else it cannot read fails the whole
//! request with a message that names the JSON path, e.g.
//! `resourceMetrics[0].scopeMetrics[0].metrics[1].sum.dataPoints[0].asInt: ...`.
//! Exemplars, metric metadata and entity references are skipped: fanin stores none of them.

use std::fmt;

use base64::Engine;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
mod tree;

use tree::{Object, Value};

/// Why a JSON body could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// Path segments from the innermost outwards; reversed when displayed.
    path: Vec<String>,
    message: String,
}

impl JsonError {
    fn new(message: impl Into<String>) -> JsonError {
        JsonError {
            path: Vec::new(),
            message: message.into(),
        }
    }

    fn within(mut self, segment: impl Into<String>) -> JsonError {
        self.path.push(segment.into());
        self
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            return write!(formatter, "{}", self.message);
        }
        let mut path = String::new();
        for segment in self.path.iter().rev() {
            if !path.is_empty() && !segment.starts_with('[') {
                path.push('.');
            }
            path.push_str(segment);
        }
        write!(formatter, "{path}: {}", self.message)
    }
}

impl std::error::Error for JsonError {}

type Result<T> = std::result::Result<T, JsonError>;

/// Decodes an OTLP/JSON `ExportMetricsServiceRequest`.
///
/// # Errors
/// [`JsonError`] when the body is not JSON, or a known field has a value that cannot be read.
pub fn decode_request(body: &[u8]) -> Result<ExportMetricsServiceRequest> {
    let tree = tree::parse(body)
        .map_err(|error| JsonError::new(format!("body is not valid JSON: {error}")))?;
    let object = as_object(&tree)?;
    Ok(ExportMetricsServiceRequest {
        resource_metrics: list(
            object,
            "resourceMetrics",
            "resource_metrics",
            resource_metrics,
        )?,
    })
}

fn as_object<'v, 'j>(value: &'v Value<'j>) -> Result<&'v Object<'j>> {
    value
        .as_object()
        .ok_or_else(|| JsonError::new(format!("expected an object, found {}", kind_of(value))))
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Looks a field up by its lowerCamelCase or snake_case name; `null` counts as absent.
fn field<'a, 'j>(
    object: &'a Object<'j>,
    camel: &str,
    snake: &str,
) -> Result<Option<&'a Value<'j>>> {
    let by_camel = object.get(camel).filter(|value| !value.is_null());
    let by_snake = if camel == snake {
        None
    } else {
        object.get(snake).filter(|value| !value.is_null())
    };
    match (by_camel, by_snake) {
        (Some(_), Some(_)) => Err(JsonError::new(format!(
            "both {camel:?} and {snake:?} are given; send one"
        ))),
        (value, None) | (None, value) => Ok(value),
    }
}

/// Reads an optional field with `read`, prefixing any error with the field name.
fn optional<T>(
    object: &Object,
    camel: &str,
    snake: &str,
    read: impl FnOnce(&Value) -> Result<T>,
) -> Result<Option<T>> {
    match field(object, camel, snake)? {
        None => Ok(None),
        Some(value) => read(value).map(Some).map_err(|error| error.within(camel)),
    }
}

/// Reads a field with `read`, or the type's default when it is absent.
fn or_default<T: Default>(
    object: &Object,
    camel: &str,
    snake: &str,
    read: impl FnOnce(&Value) -> Result<T>,
) -> Result<T> {
    Ok(optional(object, camel, snake, read)?.unwrap_or_default())
}

/// Reads a repeated message field, each element with `read`.
fn list<T>(
    object: &Object,
    camel: &str,
    snake: &str,
    read: impl Fn(&Object) -> Result<T>,
) -> Result<Vec<T>> {
    or_default(object, camel, snake, |value| {
        array(value, |element| read(as_object(element)?))
    })
}

fn array<T>(value: &Value, read: impl Fn(&Value) -> Result<T>) -> Result<Vec<T>> {
    let Value::Array(elements) = value else {
        return Err(JsonError::new(format!(
            "expected an array, found {}",
            kind_of(value)
        )));
    };
    elements
        .iter()
        .enumerate()
        .map(|(index, element)| read(element).map_err(|error| error.within(format!("[{index}]"))))
        .collect()
}

fn string(value: &Value) -> Result<String> {
    match value {
        Value::String(text) => Ok(text.to_string()),
        other => Err(JsonError::new(format!(
            "expected a string, found {}",
            kind_of(other)
        ))),
    }
}

fn boolean(value: &Value) -> Result<bool> {
    match value {
        Value::Bool(flag) => Ok(*flag),
        other => Err(JsonError::new(format!(
            "expected true or false, found {}",
            kind_of(other)
        ))),
    }
}

/// An integer given as a JSON number or a decimal string, as proto3 JSON allows for every
/// integer type. Numbers written with a fraction or exponent are accepted when they are
/// exactly an integer (`1e3`, `5.0`).
fn integer(value: &Value) -> Result<i128> {
    let exact = |float: f64| -> Option<i128> {
        (float.is_finite() && float.fract() == 0.0 && float.abs() < 1.9e19).then_some(float as i128)
    };
    let parsed = match value {
        Value::Number(number) => number
            .as_i64()
            .map(i128::from)
            .or_else(|| number.as_u64().map(i128::from))
            .or_else(|| number.as_f64().and_then(exact)),
        Value::String(text) => text
            .parse::<i128>()
            .ok()
            .or_else(|| text.parse::<f64>().ok().and_then(exact)),
        other => {
            return Err(JsonError::new(format!(
                "expected an integer (number or decimal string), found {}",
                kind_of(other)
            )));
        }
    };
    parsed.ok_or_else(|| JsonError::new(format!("{value} is not an integer")))
}

fn integer_in<T: TryFrom<i128>>(value: &Value, type_name: &str) -> Result<T> {
    let wide = integer(value)?;
    T::try_from(wide).map_err(|_| JsonError::new(format!("{wide} does not fit in {type_name}")))
}

fn uint64(value: &Value) -> Result<u64> {
    integer_in(value, "uint64")
}

fn int64(value: &Value) -> Result<i64> {
    integer_in(value, "int64")
}

fn int32(value: &Value) -> Result<i32> {
    integer_in(value, "int32")
}

fn uint32(value: &Value) -> Result<u32> {
    integer_in(value, "uint32")
}

/// A double given as a number or a string; the strings include `"NaN"`, `"Infinity"` and
/// `"-Infinity"`.
fn double(value: &Value) -> Result<f64> {
    match value {
        Value::Number(number) => number
            .as_f64()
            .ok_or_else(|| JsonError::new(format!("{number} is not a double"))),
        Value::String(text) => text
            .parse::<f64>()
            .map_err(|_| JsonError::new(format!("{text:?} is not a double"))),
        other => Err(JsonError::new(format!(
            "expected a double, found {}",
            kind_of(other)
        ))),
    }
}

fn bytes(value: &Value) -> Result<Vec<u8>> {
    let text = string(value)?;
    // proto3 JSON writes standard base64 with padding; parsers must accept URL-safe and
    // unpadded input too.
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines
        .iter()
        .find_map(|engine| engine.decode(&text).ok())
        .ok_or_else(|| JsonError::new(format!("{text:?} is not base64")))
}

/// `AggregationTemporality`, as an integer or its name.
fn temporality(value: &Value) -> Result<i32> {
    if let Value::String(name) = value {
        match name.as_ref() {
            "AGGREGATION_TEMPORALITY_UNSPECIFIED" => return Ok(0),
            "AGGREGATION_TEMPORALITY_DELTA" => return Ok(1),
            "AGGREGATION_TEMPORALITY_CUMULATIVE" => return Ok(2),
            _ if name.parse::<i32>().is_ok() => {}
            _ => {
                return Err(JsonError::new(format!(
                    "{name:?} is not an AggregationTemporality (use 1 for DELTA, 2 for CUMULATIVE)"
                )));
            }
        }
    }
    int32(value)
}

/// The `aggregationTemporality` of a sum or histogram; UNSPECIFIED (0) when absent.
fn temporality_field(object: &Object) -> Result<i32> {
    or_default(
        object,
        "aggregationTemporality",
        "aggregation_temporality",
        temporality,
    )
}

fn resource_metrics(object: &Object) -> Result<ResourceMetrics> {
    Ok(ResourceMetrics {
        resource: optional(object, "resource", "resource", |value| {
            let resource = as_object(value)?;
            Ok(Resource {
                attributes: list(resource, "attributes", "attributes", key_value)?,
                ..Default::default()
            })
        })?,
        scope_metrics: list(object, "scopeMetrics", "scope_metrics", scope_metrics)?,
        schema_url: or_default(object, "schemaUrl", "schema_url", string)?,
    })
}

fn scope_metrics(object: &Object) -> Result<ScopeMetrics> {
    Ok(ScopeMetrics {
        scope: optional(object, "scope", "scope", |value| {
            let scope = as_object(value)?;
            Ok(InstrumentationScope {
                name: or_default(scope, "name", "name", string)?,
                version: or_default(scope, "version", "version", string)?,
                attributes: list(scope, "attributes", "attributes", key_value)?,
                dropped_attributes_count: 0,
            })
        })?,
        metrics: list(object, "metrics", "metrics", metric)?,
        schema_url: or_default(object, "schemaUrl", "schema_url", string)?,
    })
}

fn key_value(object: &Object) -> Result<KeyValue> {
    Ok(KeyValue {
        key: or_default(object, "key", "key", string)?,
        value: optional(object, "value", "value", |value| {
            any_value(as_object(value)?)
        })?,
        ..Default::default()
    })
}

fn any_value(object: &Object) -> Result<AnyValue> {
    let mut members = Vec::new();
    if let Some(text) = optional(object, "stringValue", "string_value", string)? {
        members.push(any_value::Value::StringValue(text));
    }
    if let Some(flag) = optional(object, "boolValue", "bool_value", boolean)? {
        members.push(any_value::Value::BoolValue(flag));
    }
    if let Some(number) = optional(object, "intValue", "int_value", int64)? {
        members.push(any_value::Value::IntValue(number));
    }
    if let Some(number) = optional(object, "doubleValue", "double_value", double)? {
        members.push(any_value::Value::DoubleValue(number));
    }
    if let Some(values) = optional(object, "arrayValue", "array_value", |value| {
        let array_object = as_object(value)?;
        or_default(array_object, "values", "values", |values| {
            array(values, |element| any_value(as_object(element)?))
        })
    })? {
        members.push(any_value::Value::ArrayValue(ArrayValue { values }));
    }
    if let Some(values) = optional(object, "kvlistValue", "kvlist_value", |value| {
        list(as_object(value)?, "values", "values", key_value)
    })? {
        members.push(any_value::Value::KvlistValue(KeyValueList { values }));
    }
    if let Some(data) = optional(object, "bytesValue", "bytes_value", bytes)? {
        members.push(any_value::Value::BytesValue(data));
    }
    if members.len() > 1 {
        return Err(JsonError::new(
            "an AnyValue sets more than one of its members",
        ));
    }
    Ok(AnyValue {
        value: members.pop(),
    })
}

fn metric(object: &Object) -> Result<Metric> {
    let mut data = Vec::new();
    if let Some(gauge) = optional(object, "gauge", "gauge", |value| {
        Ok(Gauge {
            data_points: list(as_object(value)?, "dataPoints", "data_points", number_point)?,
        })
    })? {
        data.push(Data::Gauge(gauge));
    }
    if let Some(sum) = optional(object, "sum", "sum", |value| {
        let sum = as_object(value)?;
        Ok(Sum {
            data_points: list(sum, "dataPoints", "data_points", number_point)?,
            aggregation_temporality: temporality_field(sum)?,
            is_monotonic: or_default(sum, "isMonotonic", "is_monotonic", boolean)?,
        })
    })? {
        data.push(Data::Sum(sum));
    }
    if let Some(histogram) = optional(object, "histogram", "histogram", |value| {
        let histogram = as_object(value)?;
        Ok(Histogram {
            data_points: list(histogram, "dataPoints", "data_points", histogram_point)?,
            aggregation_temporality: temporality_field(histogram)?,
        })
    })? {
        data.push(Data::Histogram(histogram));
    }
    if let Some(histogram) = optional(
        object,
        "exponentialHistogram",
        "exponential_histogram",
        |value| {
            let histogram = as_object(value)?;
            Ok(ExponentialHistogram {
                data_points: list(histogram, "dataPoints", "data_points", exp_histogram_point)?,
                aggregation_temporality: temporality_field(histogram)?,
            })
        },
    )? {
        data.push(Data::ExponentialHistogram(histogram));
    }
    if let Some(summary) = optional(object, "summary", "summary", |value| {
        Ok(Summary {
            data_points: list(
                as_object(value)?,
                "dataPoints",
                "data_points",
                summary_point,
            )?,
        })
    })? {
        data.push(Data::Summary(summary));
    }
    if data.len() > 1 {
        return Err(JsonError::new(
            "a metric sets more than one of gauge, sum, histogram, exponentialHistogram, summary",
        ));
    }
    Ok(Metric {
        name: or_default(object, "name", "name", string)?,
        description: or_default(object, "description", "description", string)?,
        unit: or_default(object, "unit", "unit", string)?,
        metadata: Vec::new(),
        data: data.pop(),
    })
}

/// The fields every point kind shares: attributes, start, time, flags.
struct Common {
    attributes: Vec<KeyValue>,
    start: u64,
    time: u64,
    flags: u32,
}

fn common(object: &Object) -> Result<Common> {
    Ok(Common {
        attributes: list(object, "attributes", "attributes", key_value)?,
        start: or_default(object, "startTimeUnixNano", "start_time_unix_nano", uint64)?,
        time: or_default(object, "timeUnixNano", "time_unix_nano", uint64)?,
        flags: or_default(object, "flags", "flags", uint32)?,
    })
}

fn number_point(object: &Object) -> Result<NumberDataPoint> {
    let common = common(object)?;
    let as_double = optional(object, "asDouble", "as_double", double)?;
    let as_int = optional(object, "asInt", "as_int", int64)?;
    let value = match (as_double, as_int) {
        (Some(_), Some(_)) => {
            return Err(JsonError::new("a point sets both asDouble and asInt"));
        }
        (Some(number), None) => Some(number_data_point::Value::AsDouble(number)),
        (None, Some(number)) => Some(number_data_point::Value::AsInt(number)),
        (None, None) => None,
    };
    Ok(NumberDataPoint {
        attributes: common.attributes,
        start_time_unix_nano: common.start,
        time_unix_nano: common.time,
        exemplars: Vec::new(),
        flags: common.flags,
        value,
    })
}

fn histogram_point(object: &Object) -> Result<HistogramDataPoint> {
    let common = common(object)?;
    Ok(HistogramDataPoint {
        attributes: common.attributes,
        start_time_unix_nano: common.start,
        time_unix_nano: common.time,
        count: or_default(object, "count", "count", uint64)?,
        sum: optional(object, "sum", "sum", double)?,
        bucket_counts: or_default(object, "bucketCounts", "bucket_counts", |value| {
            array(value, uint64)
        })?,
        explicit_bounds: or_default(object, "explicitBounds", "explicit_bounds", |value| {
            array(value, double)
        })?,
        exemplars: Vec::new(),
        flags: common.flags,
        min: optional(object, "min", "min", double)?,
        max: optional(object, "max", "max", double)?,
    })
}

fn exp_buckets(value: &Value) -> Result<Buckets> {
    let object = as_object(value)?;
    Ok(Buckets {
        offset: or_default(object, "offset", "offset", int32)?,
        bucket_counts: or_default(object, "bucketCounts", "bucket_counts", |value| {
            array(value, uint64)
        })?,
    })
}

fn exp_histogram_point(object: &Object) -> Result<ExponentialHistogramDataPoint> {
    let common = common(object)?;
    Ok(ExponentialHistogramDataPoint {
        attributes: common.attributes,
        start_time_unix_nano: common.start,
        time_unix_nano: common.time,
        count: or_default(object, "count", "count", uint64)?,
        sum: optional(object, "sum", "sum", double)?,
        scale: or_default(object, "scale", "scale", int32)?,
        zero_count: or_default(object, "zeroCount", "zero_count", uint64)?,
        positive: optional(object, "positive", "positive", exp_buckets)?,
        negative: optional(object, "negative", "negative", exp_buckets)?,
        flags: common.flags,
        exemplars: Vec::new(),
        min: optional(object, "min", "min", double)?,
        max: optional(object, "max", "max", double)?,
        zero_threshold: or_default(object, "zeroThreshold", "zero_threshold", double)?,
    })
}

fn summary_point(object: &Object) -> Result<SummaryDataPoint> {
    let common = common(object)?;
    Ok(SummaryDataPoint {
        attributes: common.attributes,
        start_time_unix_nano: common.start,
        time_unix_nano: common.time,
        count: or_default(object, "count", "count", uint64)?,
        sum: or_default(object, "sum", "sum", double)?,
        quantile_values: list(object, "quantileValues", "quantile_values", |quantile| {
            Ok(ValueAtQuantile {
                quantile: or_default(quantile, "quantile", "quantile", double)?,
                value: or_default(quantile, "value", "value", double)?,
            })
        })?,
        flags: common.flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn decode(text: &str) -> ExportMetricsServiceRequest {
        decode_request(text.as_bytes()).unwrap_or_else(|error| panic!("{error}"))
    }

    #[track_caller]
    fn check_error(text: &str, expected: &str) {
        let error = decode_request(text.as_bytes()).expect_err("must fail");
        assert_eq!(error.to_string(), expected);
    }

    /// One sum point inside the minimum wrapping, with `point` spliced in.
    fn sum_with_point(sum_fields: &str, point: &str) -> String {
        format!(
            r#"{{"resourceMetrics":[{{"scopeMetrics":[{{"metrics":[{{"name":"m","sum":{{{sum_fields}"dataPoints":[{point}]}}}}]}}]}}]}}"#
        )
    }

    fn first_metric(request: &ExportMetricsServiceRequest) -> &Metric {
        &request.resource_metrics[0].scope_metrics[0].metrics[0]
    }

    fn first_number_point(request: &ExportMetricsServiceRequest) -> &NumberDataPoint {
        match &first_metric(request).data {
            Some(Data::Sum(sum)) => &sum.data_points[0],
            other => panic!("expected a sum, got {other:?}"),
        }
    }

    #[track_caller]
    fn check_value(point: &str, expected: number_data_point::Value) {
        let request = decode(&sum_with_point("", point));
        let got = first_number_point(&request).value.expect("value is kept");
        match (got, expected) {
            (number_data_point::Value::AsDouble(a), number_data_point::Value::AsDouble(b)) => {
                assert!(a.to_bits() == b.to_bits(), "{a} != {b}")
            }
            (got, expected) => assert_eq!(got, expected),
        }
    }

    #[test]
    fn values_in_every_spelling() {
        use number_data_point::Value::{AsDouble, AsInt};
        check_value(r#"{"asInt":"42"}"#, AsInt(42));
        check_value(r#"{"asInt":42}"#, AsInt(42));
        check_value(r#"{"asInt":"-5"}"#, AsInt(-5));
        check_value(r#"{"asInt":3.0}"#, AsInt(3));
        check_value(r#"{"as_int":"9223372036854775807"}"#, AsInt(i64::MAX));
        check_value(r#"{"asDouble":4.5}"#, AsDouble(4.5));
        check_value(r#"{"asDouble":5}"#, AsDouble(5.0));
        check_value(r#"{"asDouble":"4.5"}"#, AsDouble(4.5));
        check_value(r#"{"asDouble":"NaN"}"#, AsDouble(f64::NAN));
        check_value(r#"{"asDouble":"Infinity"}"#, AsDouble(f64::INFINITY));
        check_value(r#"{"as_double":"-Infinity"}"#, AsDouble(f64::NEG_INFINITY));
    }

    #[test]
    fn timestamps_as_strings_numbers_and_snake_case() {
        let request = decode(&sum_with_point(
            "",
            r#"{"time_unix_nano":"1700000000000000001","startTimeUnixNano":1700000000000000000,"asInt":1}"#,
        ));
        let point = first_number_point(&request);
        assert_eq!(point.time_unix_nano, 1_700_000_000_000_000_001);
        assert_eq!(point.start_time_unix_nano, 1_700_000_000_000_000_000);
    }

    #[test]
    fn enums_as_names_or_integers() {
        for spelling in [
            r#""aggregationTemporality":2,"#,
            r#""aggregationTemporality":"2","#,
            r#""aggregation_temporality":"AGGREGATION_TEMPORALITY_CUMULATIVE","#,
        ] {
            let request = decode(&sum_with_point(spelling, r#"{"asInt":1}"#));
            match &first_metric(&request).data {
                Some(Data::Sum(sum)) => assert_eq!(sum.aggregation_temporality, 2, "{spelling}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn flags_and_scale_as_strings() {
        let request = decode(&sum_with_point("", r#"{"flags":"1","timeUnixNano":"5"}"#));
        assert_eq!(first_number_point(&request).flags, 1);
    }

    #[test]
    fn errors_name_the_path() {
        check_error(
            &sum_with_point("", r#"{"asInt":"9223372036854775808"}"#),
            "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0].asInt: 9223372036854775808 does not fit in int64",
        );
        check_error(
            &sum_with_point("", r#"{"asInt":"3.5"}"#),
            "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0].asInt: \"3.5\" is not an integer",
        );
        check_error(
            &sum_with_point(r#""aggregationTemporality":"SOMETIMES","#, "{}"),
            "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.aggregationTemporality: \"SOMETIMES\" is not an AggregationTemporality (use 1 for DELTA, 2 for CUMULATIVE)",
        );
        check_error(
            &sum_with_point("", r#"{"timeUnixNano":"-1"}"#),
            "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0].timeUnixNano: -1 does not fit in uint64",
        );
        check_error(
            &sum_with_point("", r#"{"asDouble":"lots"}"#),
            "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0].asDouble: \"lots\" is not a double",
        );
        check_error(
            &sum_with_point("", r#"{"asDouble":1,"asInt":1}"#),
            "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0]: a point sets both asDouble and asInt",
        );
        check_error(
            &sum_with_point("", r#"{"timeUnixNano":"1","time_unix_nano":"1"}"#),
            "resourceMetrics[0].scopeMetrics[0].metrics[0].sum.dataPoints[0]: both \"timeUnixNano\" and \"time_unix_nano\" are given; send one",
        );
        check_error(
            r#"{"resourceMetrics":{}}"#,
            "resourceMetrics: expected an array, found an object",
        );
        check_error("[]", "expected an object, found an array");
        check_error(
            r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"a","value":{"doubleValue":"x"}}]}}]}"#,
            "resourceMetrics[0].resource.attributes[0].value.doubleValue: \"x\" is not a double",
        );
    }

    #[test]
    fn truncated_json_is_an_error() {
        let error = decode_request(br#"{"resourceMetrics":[{"#).expect_err("truncated");
        assert!(
            error.to_string().starts_with("body is not valid JSON"),
            "{error}"
        );
    }

    #[test]
    fn unknown_keys_and_nulls_are_ignored() {
        let request = decode(&sum_with_point(
            r#""fancy":{"x":1},"isMonotonic":null,"#,
            r#"{"asInt":1,"attributes":null,"exemplars":[{"traceId":"zz"}],"future":true}"#,
        ));
        assert_eq!(
            first_number_point(&request).value,
            Some(number_data_point::Value::AsInt(1))
        );
    }

    #[test]
    fn attribute_values_of_every_type() {
        let request = decode(
            r#"{"resourceMetrics":[{"resource":{"attributes":[
                {"key":"s","value":{"stringValue":"x"}},
                {"key":"b","value":{"boolValue":true}},
                {"key":"i","value":{"intValue":"7"}},
                {"key":"d","value":{"doubleValue":"NaN"}},
                {"key":"y","value":{"bytesValue":"aGk="}},
                {"key":"a","value":{"arrayValue":{}}},
                {"key":"k","value":{"kvlistValue":{"values":[{"key":"n","value":{"intValue":1}}]}}},
                {"key":"e","value":{}}
            ]}}]}"#,
        );
        let attributes = &request.resource_metrics[0]
            .resource
            .as_ref()
            .expect("resource")
            .attributes;
        assert_eq!(attributes.len(), 8);
        let value = |index: usize| {
            attributes[index]
                .value
                .as_ref()
                .and_then(|v| v.value.clone())
        };
        assert_eq!(value(2), Some(any_value::Value::IntValue(7)));
        assert_eq!(value(4), Some(any_value::Value::BytesValue(b"hi".to_vec())));
        assert_eq!(
            value(5),
            Some(any_value::Value::ArrayValue(ArrayValue { values: vec![] }))
        );
        assert_eq!(value(7), None);
    }

    #[test]
    fn every_kind_decodes() {
        let request = decode(
            r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[
                {"name":"g","gauge":{"dataPoints":[{"timeUnixNano":"1","asDouble":"NaN"}]}},
                {"name":"h","histogram":{"aggregationTemporality":1,"dataPoints":[{"timeUnixNano":"1","count":"2","sum":"NaN","bucketCounts":["1",1],"explicitBounds":["1.5"],"min":null}]}},
                {"name":"e","exponentialHistogram":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_DELTA","dataPoints":[{"timeUnixNano":"1","count":"3","scale":"-2","zeroCount":"1","positive":{"offset":"-1","bucketCounts":["0","2"]}}]}},
                {"name":"s","summary":{"dataPoints":[{"timeUnixNano":"1","count":"4","sum":"Infinity","quantileValues":[{"quantile":0.5,"value":"NaN"},{"quantile":1}]}]}}
            ]}]}]}"#,
        );
        let metrics = &request.resource_metrics[0].scope_metrics[0].metrics;
        match &metrics[1].data {
            Some(Data::Histogram(histogram)) => {
                let point = &histogram.data_points[0];
                assert_eq!(point.bucket_counts, vec![1, 1]);
                assert_eq!(point.explicit_bounds, vec![1.5]);
                assert!(point.sum.is_some_and(f64::is_nan));
                assert_eq!(point.min, None);
            }
            other => panic!("{other:?}"),
        }
        match &metrics[2].data {
            Some(Data::ExponentialHistogram(histogram)) => {
                assert_eq!(histogram.aggregation_temporality, 1);
                let point = &histogram.data_points[0];
                assert_eq!(point.scale, -2);
                assert_eq!(point.positive.as_ref().map(|b| b.offset), Some(-1));
            }
            other => panic!("{other:?}"),
        }
        match &metrics[3].data {
            Some(Data::Summary(summary)) => {
                let point = &summary.data_points[0];
                assert_eq!(point.sum, f64::INFINITY);
                assert_eq!(point.quantile_values.len(), 2);
                assert_eq!(point.quantile_values[1].value, 0.0);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_kinds_in_one_metric_is_an_error() {
        check_error(
            r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"x","gauge":{},"sum":{}}]}]}]}"#,
            "resourceMetrics[0].scopeMetrics[0].metrics[0]: a metric sets more than one of gauge, sum, histogram, exponentialHistogram, summary",
        );
    }
}
