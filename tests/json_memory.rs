//! OTLP/JSON is decoded within a few times the body's size: the heap this test process
//! holds at its peak while a body is decoded, counted by dhat, stays under
//! [`MAX_PER_BODY_BYTE`] times the body. (serde_json's own tree took about 48.)

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use fanin::receiver::json::decode_request;

/// The most heap a decode may take at its peak, per byte of body, the decoded request
/// included.
const MAX_PER_BODY_BYTE: usize = 6;

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// An SDK-shaped body: `points` counter points of one metric, each with two attributes.
fn body(points: usize) -> Vec<u8> {
    let mut text = String::from(
        r#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"app"}}]},"scopeMetrics":[{"scope":{"name":"s"},"metrics":[{"name":"http.server.requests","unit":"{request}","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":["#,
    );
    for point in 0..points {
        if point > 0 {
            text.push(',');
        }
        text.push_str(&format!(
            r#"{{"attributes":[{{"key":"http.route","value":{{"stringValue":"/r/{point}"}}}},{{"key":"http.status_code","value":{{"intValue":"200"}}}}],"startTimeUnixNano":"1700000000000000000","timeUnixNano":"1700000010000000000","asInt":"{point}"}}"#
        ));
    }
    text.push_str("]}}]}]}]}");
    text.into_bytes()
}

#[test]
fn a_large_json_body_decodes_within_a_few_times_its_size() {
    let body = body(20_000);
    // Counts what is allocated from here on; the body was allocated before.
    let _profiler = dhat::Profiler::builder().testing().build();
    let request = decode_request(&body).expect("the body decodes");
    let peak = dhat::HeapStats::get().max_bytes;
    let points = match &request.resource_metrics[0].scope_metrics[0].metrics[0].data {
        Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) => {
            sum.data_points.len()
        }
        other => panic!("a sum: {other:?}"),
    };
    assert_eq!(points, 20_000);
    let per_byte = peak as f64 / body.len() as f64;
    eprintln!(
        "body {} bytes, decode peak {peak} bytes: {per_byte:.2} per body byte",
        body.len()
    );
    assert!(
        peak <= MAX_PER_BODY_BYTE * body.len(),
        "decoding took {per_byte:.2} bytes per body byte"
    );
}
