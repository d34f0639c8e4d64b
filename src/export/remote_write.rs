//! Prometheus remote-write 1.0: the `WriteRequest` protobuf, compressed with snappy's block
//! format, of the same series `/metrics` shows (names, labels and buckets are made by
//! `query::prometheus`, so both agree sample for sample).

use crate::model::Total;
use crate::query::prometheus::{Families, SampleSink};

/// `prometheus.WriteRequest` (remote-write 1.0): field numbers as the protocol has them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Encodes samples as a `WriteRequest`, one time series per sample, at one timestamp. Each
/// series is encoded as it comes (field 1 of the request, repeated), so only the encoded
/// body is held, never the messages.
pub struct RemoteWriteSink {
    body: Vec<u8>,
    series: usize,
    timestamp_ms: i64,
    /// Labels added to every series (`external_labels`, this sidecar's identity).
    external: Vec<Label>,
}

impl RemoteWriteSink {
    pub fn new(timestamp_ms: i64, external: Vec<(String, String)>) -> RemoteWriteSink {
        RemoteWriteSink {
            body: Vec::new(),
            series: 0,
            timestamp_ms,
            external: external
                .into_iter()
                .map(|(name, value)| Label { name, value })
                .collect(),
        }
    }
}

impl SampleSink for RemoteWriteSink {
    type Labels = Vec<(String, String)>;

    fn labels(&self, pairs: Vec<(String, String)>) -> Self::Labels {
        pairs
    }

    fn sample(&mut self, name: &str, labels: &Self::Labels, le: Option<&str>, value: Total) {
        let mut all: Vec<Label> = Vec::with_capacity(labels.len() + self.external.len() + 2);
        all.push(Label {
            name: "__name__".into(),
            value: name.to_string(),
        });
        for (label, text) in labels {
            // An external label wins over a worker's label of the same name.
            if self.external.iter().all(|external| external.name != *label) {
                all.push(Label {
                    name: label.clone(),
                    value: text.clone(),
                });
            }
        }
        all.extend(self.external.iter().cloned());
        if let Some(le) = le {
            all.push(Label {
                name: "le".into(),
                value: le.to_string(),
            });
        }
        // Remote-write wants labels sorted by name.
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let value = match value {
            Total::Int(value) => value as f64,
            Total::Double(value) => value,
        };
        let series = TimeSeries {
            labels: all,
            samples: vec![Sample {
                value,
                timestamp: self.timestamp_ms,
            }],
        };
        prost::encoding::message::encode(1, &series, &mut self.body);
        self.series += 1;
    }
}

/// The remote-write body for `families`: protobuf, then snappy (block format).
///
/// # Errors
/// Only if snappy cannot compress (a body over its 4 GiB limit).
pub fn body(
    families: &Families,
    timestamp_ms: i64,
    external: Vec<(String, String)>,
) -> Result<(Vec<u8>, usize), snap::Error> {
    let mut sink = RemoteWriteSink::new(timestamp_ms, external);
    families.write_to(&mut sink);
    let compressed = snap::raw::Encoder::new().compress_vec(&sink.body)?;
    Ok((compressed, sink.series))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn series_encoded_one_by_one_read_back_as_one_write_request() {
        let mut sink = RemoteWriteSink::new(7, vec![("fanin_instance".into(), "a".into())]);
        let labels = sink.labels(vec![("route".into(), "/a".into())]);
        sink.sample("x_total", &labels, None, Total::Int(3));
        sink.sample("h_bucket", &labels, Some("+Inf"), Total::Double(2.5));
        let request = WriteRequest::decode(sink.body.as_slice()).expect("a WriteRequest");
        assert_eq!(request.timeseries.len(), 2);
        let names: Vec<&str> = request.timeseries[1]
            .labels
            .iter()
            .map(|label| label.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["__name__", "fanin_instance", "le", "route"],
            "sorted"
        );
        assert_eq!(
            request.timeseries[0].samples,
            [Sample {
                value: 3.0,
                timestamp: 7
            }]
        );
    }
}
