//! Hostile input never panics: thousands of mutated protobuf and OTLP/JSON bodies (bit
//! flips, truncations, splices, odd numbers) go through decoding, conversion, storage and
//! every query renderer. Mutations come from a fixed-seed generator, so a failure replays.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "common/mutation.rs"]
mod mutation;

use std::num::NonZeroUsize;

use fanin::model::InstanceAttributes;
use fanin::receiver::{json, otlp, receive_protobuf};
use fanin::store::{CollisionPolicy, Store, StoreSettings, Transport, Writer};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use mutation::{Rng, mutate};

/// A request with every kind, built from the OTLP/JSON fixture shape.
const SEED_JSON: &str = r#"{"resourceMetrics":[{"resource":{"attributes":[
 {"key":"service.name","value":{"stringValue":"app"}},
 {"key":"service.instance.id","value":{"stringValue":"w1"}},
 {"key":"process.pid","value":{"intValue":"42"}},
 {"key":"tags","value":{"arrayValue":{"values":[{"intValue":1},{"kvlistValue":{"values":[{"key":"k","value":{"doubleValue":"NaN"}}]}}]}}}]},
 "scopeMetrics":[{"scope":{"name":"lib","version":"1"},"metrics":[
 {"name":"c","unit":"1","sum":{"aggregationTemporality":2,"isMonotonic":true,"dataPoints":[{"attributes":[{"key":"r","value":{"stringValue":"/a"}}],"startTimeUnixNano":"5","timeUnixNano":"10","asInt":"7"}]}},
 {"name":"d","sum":{"aggregationTemporality":1,"dataPoints":[{"startTimeUnixNano":"5","timeUnixNano":"10","asDouble":1.5}]}},
 {"name":"g","gauge":{"dataPoints":[{"timeUnixNano":"10","asDouble":"Infinity"}]}},
 {"name":"h","histogram":{"aggregationTemporality":2,"dataPoints":[{"startTimeUnixNano":"5","timeUnixNano":"10","count":"3","sum":2,"bucketCounts":["1","1","1"],"explicitBounds":[1,2]}]}},
 {"name":"e","exponentialHistogram":{"aggregationTemporality":2,"dataPoints":[{"startTimeUnixNano":"5","timeUnixNano":"10","count":"3","scale":20,"zeroCount":"1","positive":{"offset":-5,"bucketCounts":["1","1"]},"negative":{"offset":1000,"bucketCounts":["0"]}}]}},
 {"name":"s","summary":{"dataPoints":[{"timeUnixNano":"10","count":"2","sum":3,"quantileValues":[{"quantile":0.5,"value":1}]}]}}
]}]}]}"#;

fn store() -> Store {
    let instance_attributes = InstanceAttributes::new(["service.instance.id", "process.*"])
        .unwrap_or_else(|error| panic!("literal globs: {error}"));
    Store::new(StoreSettings {
        limits: fanin::config::Limits {
            max_series: NonZeroUsize::new(10_000).expect("non-zero"),
            ..default_limits()
        },
        instance_attributes,
        collision_policy: CollisionPolicy::Report,
        local_host: None,
        verify_unix_pids: true,
        clock: Default::default(),
    })
}

fn ingest(store: &Store, request: ExportMetricsServiceRequest, pid: i32) {
    let writer = Writer {
        transport: Transport::Unix,
        peer: None,
        pid: Some(pid),
    };
    otlp::store_message(store, &request, writer);
}

/// Every read side, on whatever the store now holds.
async fn read_everything(store: &Store) {
    let router = fanin::query::router(
        store.clone(),
        fanin::query::QuerySettings::new(Vec::new(), 1),
        std::sync::Arc::new(fanin::security::Guard::open(fanin::store::Listener::Query)),
        CancellationToken::new(),
    );
    let mut uris = vec![
        "/metrics".to_string(),
        "/api/v1/metrics".into(),
        "/api/v1/instances".into(),
        "/api/v1/stats".into(),
        "/api/v1/collisions".into(),
    ];
    for summary in store.metrics() {
        let name =
            form_urlencoded::byte_serialize(summary.metric.name.as_bytes()).collect::<String>();
        uris.push(format!("/api/v1/query?metric={name}"));
        uris.push(format!("/api/v1/query?metric={name}&by="));
        uris.push(format!("/api/v1/series?metric={name}"));
    }
    for uri in uris {
        let request = http::Request::get(uri.as_str())
            .body(axum::body::Body::empty())
            .expect("request");
        let response = router
            .clone()
            .oneshot(request)
            .await
            .unwrap_or_else(|error| match error {});
        assert!(
            response.status().as_u16() < 500,
            "{uri} answered {}",
            response.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutated_protobuf_never_panics() {
    let seed = json::decode_request(SEED_JSON.as_bytes())
        .expect("the seed decodes")
        .encode_to_vec();
    let store = store();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut decoded = 0;
    for round in 0..8000 {
        let bytes = mutate(
            &seed,
            &mut rng,
            &[0x00, 0x01, 0x08, 0x0a, 0x11, 0x7f, 0x80, 0xff],
        );
        // The receive path: read in place, or by prost where the in-place reader declines.
        let writer = Writer {
            transport: Transport::Unix,
            peer: None,
            pid: Some(1000 + (round % 3)),
        };
        let before = store.stream_count();
        match receive_protobuf(&store, &bytes, writer) {
            Ok(_) => decoded += 1,
            Err(_) => assert_eq!(
                store.stream_count(),
                before,
                "a refused body changed the store"
            ),
        }
        // About one mutated body in thirteen still decodes; require enough to exercise ingest.
    }
    assert!(
        decoded > 300,
        "only {decoded} mutated bodies decoded: the ingest path was barely exercised"
    );
    read_everything(&store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutated_json_never_panics() {
    let store = store();
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let mut decoded = 0;
    for round in 0..4000 {
        let bytes = mutate(
            SEED_JSON.as_bytes(),
            &mut rng,
            b"0123456789-+.eE\"{}[],:nNaIfty\\u",
        );
        if let Ok(request) = json::decode_request(&bytes) {
            decoded += 1;
            ingest(&store, request, 2000 + (round % 3));
        }
    }
    assert!(decoded > 200, "only {decoded} mutated JSON bodies decoded");
    read_everything(&store).await;
}

/// The limits of the built-in default config.
fn default_limits() -> fanin::config::Limits {
    fanin::Config::from_yaml_with_env(fanin::config::DEFAULT_YAML, &|_| None)
        .map(|config| config.limits)
        .unwrap_or_else(|error| panic!("the default config parses: {error}"))
}
