//! fanin's own protobuf messages and the gRPC `QueryService`, generated at build time from
//! `proto/fanin/v1/query.proto` (see `build.rs`). OTLP types come from `opentelemetry-proto`.

/// Generated code: lints for hand-written code do not apply.
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs
)]
pub mod v1 {
    tonic::include_proto!("fanin.v1");

    /// The snapshot file (`proto/fanin/v1/snapshot.proto`): what `storage.path` holds.
    pub mod snapshot {
        tonic::include_proto!("fanin.v1.snapshot");
    }
}

/// Serializers the generated types name in `#[serde(serialize_with)]`: doubles JSON cannot
/// hold become strings, bytes become base64. Also the hand-written `Serialize` impls of the
/// messages whose JSON is not a plain struct (see `build.rs`).
pub mod json {
    use base64::Engine;
    use serde::ser::{SerializeMap, SerializeSeq};
    use serde::{Serialize, Serializer};

    use super::v1::{ArrayValue, AttributeValue, KeyValueMap, Series, attribute_value, series};

    /// `{"attributes": {...}, "<result member>": ..., "instances": N}`.
    impl Serialize for Series {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(Some(3))?;
            map.serialize_entry("attributes", &self.attributes)?;
            match &self.result {
                Some(series::Result::Value(value)) => {
                    map.serialize_entry("value", &Double(*value))?
                }
                Some(series::Result::IntValue(value)) => map.serialize_entry("value", value)?,
                Some(series::Result::Histogram(histogram)) => {
                    map.serialize_entry("histogram", histogram)?
                }
                Some(series::Result::ExponentialHistogram(histogram)) => {
                    map.serialize_entry("exponential_histogram", histogram)?
                }
                Some(series::Result::Summary(summary)) => {
                    map.serialize_entry("summary", summary)?
                }
                None => map.serialize_entry("value", &())?,
            }
            map.serialize_entry("instances", &self.instances)?;
            map.end()
        }
    }

    /// The bare value: a string, number, boolean, base64 text, array or object; unset is null.
    impl Serialize for AttributeValue {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match &self.value {
                None => serializer.serialize_none(),
                Some(attribute_value::Value::StringValue(text)) => serializer.serialize_str(text),
                Some(attribute_value::Value::BoolValue(flag)) => serializer.serialize_bool(*flag),
                Some(attribute_value::Value::IntValue(number)) => serializer.serialize_i64(*number),
                Some(attribute_value::Value::DoubleValue(number)) => double(number, serializer),
                Some(attribute_value::Value::BytesValue(bytes)) => base64(bytes, serializer),
                Some(attribute_value::Value::ArrayValue(array)) => array.serialize(serializer),
                Some(attribute_value::Value::MapValue(map)) => map.serialize(serializer),
            }
        }
    }

    impl Serialize for ArrayValue {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(Some(self.values.len()))?;
            for value in &self.values {
                seq.serialize_element(value)?;
            }
            seq.end()
        }
    }

    impl Serialize for KeyValueMap {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            self.values.serialize(serializer)
        }
    }

    /// A double serialized with [`double`].
    struct Double(f64);

    impl Serialize for Double {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            double(&self.0, serializer)
        }
    }

    /// A double; NaN and infinities as "NaN", "Infinity", "-Infinity" (proto3 JSON).
    pub fn double<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_nan() {
            serializer.serialize_str("NaN")
        } else if *value == f64::INFINITY {
            serializer.serialize_str("Infinity")
        } else if *value == f64::NEG_INFINITY {
            serializer.serialize_str("-Infinity")
        } else {
            serializer.serialize_f64(*value)
        }
    }

    /// An optional double: `null` when unset.
    pub fn optional_double<S: Serializer>(
        value: &Option<f64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => double(value, serializer),
            None => serializer.serialize_none(),
        }
    }

    /// A histogram bucket's upper bound: the last one is "+Inf", as Prometheus writes it.
    pub fn bucket_bound<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if *value == f64::INFINITY {
            serializer.serialize_str("+Inf")
        } else {
            double(value, serializer)
        }
    }

    pub fn base64<S: Serializer>(value: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(value))
    }
}
