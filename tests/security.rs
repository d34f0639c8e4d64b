//! Who may write and read (`docs/design.md`): TLS on the TCP listeners, mutual TLS, bearer
//! tokens, and a certificate swapped on disk, with real clients (the official Rust SDK,
//! tonic, reqwest over rustls) against a real fanin on 127.0.0.1:0.

// Tests may panic on what they expect: a failed expectation is the test failing.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::pki::{Pki, SdkHttpsClient, https_client, request};
use common::{TestFanin, eventually, export, start_with};
use fanin::config::{AuthConfig, Secret};
use opentelemetry::KeyValue;
use opentelemetry::metrics::MeterProvider;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use prost::Message;
use serde_json::json;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const TOKEN: &str = "writers-7f3a9c";
const READ_TOKEN: &str = "readers-52b1e0";

fn token(text: &str) -> AuthConfig {
    AuthConfig {
        token: Some(Secret(text.to_string())),
        token_file: None,
    }
}

/// fanin with TLS and the writers' token on both OTLP listeners, the query listener plain
/// (so the harness can read it).
async fn start_tls_otlp(pki: &Pki) -> TestFanin {
    let tls = pki.server_files("server");
    start_with(|config| {
        let otlp = &mut config.receivers.otlp;
        otlp.grpc.tls = tls.clone();
        otlp.http.tls = tls;
        otlp.grpc.auth = token(TOKEN);
        otlp.http.auth = token(TOKEN);
    })
    .await
}

fn provider(exporter: opentelemetry_otlp::MetricExporter, instance: &str) -> SdkMeterProvider {
    let resource = Resource::builder()
        .with_service_name("tls-test")
        .with_attributes([KeyValue::new("service.instance.id", instance.to_string())])
        .build();
    SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter).build())
        .with_resource(resource)
        .build()
}

async fn count_and_flush(provider: SdkMeterProvider, value: u64) {
    provider
        .meter("tls-test")
        .u64_counter("jobs.done")
        .build()
        .add(value, &[]);
    tokio::task::spawn_blocking(move || provider.force_flush())
        .await
        .expect("flush task")
        .expect("the export succeeds");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rust_sdk_exports_over_tls_with_a_token_on_grpc_and_http() {
    let pki = Pki::new("sdk");
    let fanin = start_tls_otlp(&pki).await;

    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("metadata"),
    );
    let grpc = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(format!("https://{}", fanin.addresses.grpc))
        .with_tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pki.ca_pem()))
                .domain_name("localhost"),
        )
        .with_metadata(metadata)
        .build()
        .expect("gRPC exporter");
    count_and_flush(provider(grpc, "grpc-worker"), 40).await;

    let client = SdkHttpsClient {
        https: https_client(&pki.ca_pem(), None),
        address: fanin.addresses.http,
        runtime: tokio::runtime::Handle::current(),
    };
    let http = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(format!(
            "https://localhost:{}/v1/metrics",
            fanin.addresses.http.port()
        ))
        .with_headers(HashMap::from([(
            "authorization".to_string(),
            format!("Bearer {TOKEN}"),
        )]))
        .build()
        .expect("HTTP exporter");
    count_and_flush(provider(http, "http-worker"), 2).await;

    assert_eq!(fanin.total("metric=jobs.done").await, json!(42));
    let stats = fanin.stats().await;
    assert_eq!(
        stats["unauthenticated"],
        json!({"grpc": 0, "http": 0, "query": 0})
    );
    fanin.stop().await;
}

/// A raw gRPC client over TLS (trusting the test CA) or plain text.
async fn grpc_channel(
    fanin: &TestFanin,
    pki: Option<&Pki>,
) -> Result<Channel, tonic::transport::Error> {
    match pki {
        Some(pki) => {
            Channel::from_shared(format!("https://{}", fanin.addresses.grpc))
                .expect("URI")
                .tls_config(
                    ClientTlsConfig::new()
                        .ca_certificate(Certificate::from_pem(pki.ca_pem()))
                        .domain_name("localhost"),
                )?
                .connect()
                .await
        }
        None => {
            Channel::from_shared(format!("http://{}", fanin.addresses.grpc))
                .expect("URI")
                .connect()
                .await
        }
    }
}

async fn export_grpc(channel: Channel, authorization: Option<&str>) -> Result<(), tonic::Status> {
    let mut request = tonic::Request::new(export("raw").counter("raw.count", 1, 2, 5).build());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("metadata"));
    }
    MetricsServiceClient::new(channel)
        .export(request)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_the_right_token_are_refused_and_counted() {
    let pki = Pki::new("tokens");
    let fanin = start_tls_otlp(&pki).await;
    let body = export("raw")
        .counter("raw.count", 1, 2, 5)
        .build()
        .encode_to_vec();
    let client = https_client(&pki.ca_pem(), None);
    let address = fanin.addresses.http;
    let post = |authorization: Option<String>| {
        let mut request = request("POST", "/v1/metrics", None, body.clone());
        request
            .headers_mut()
            .insert("content-type", "application/x-protobuf".parse().unwrap());
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let client = client.clone();
        async move { client.send(address, request).await }
    };
    let missing = post(None).await.expect("answered");
    assert_eq!(missing.status, 401);
    assert_eq!(missing.headers["www-authenticate"], "Bearer");
    assert!(missing.text().contains("no bearer token"), "{missing:?}");
    let wrong = post(Some(format!("Bearer {TOKEN}x")))
        .await
        .expect("answered");
    assert_eq!(wrong.status, 401);
    assert!(wrong.text().contains("not the one"), "{wrong:?}");
    assert!(
        !wrong.text().contains(TOKEN),
        "the answer never echoes a token"
    );
    let basic = post(Some(format!("Basic {TOKEN}")))
        .await
        .expect("answered");
    assert_eq!(basic.status, 401);

    let status = export_grpc(grpc_channel(&fanin, Some(&pki)).await.unwrap(), None)
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let status = export_grpc(
        grpc_channel(&fanin, Some(&pki)).await.unwrap(),
        Some("Bearer readers-52b1e0"),
    )
    .await
    .expect_err("wrong token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    // The gRPC query service shares the OTLP/gRPC listener and its token.
    let mut query = fanin::proto::v1::query_service_client::QueryServiceClient::new(
        grpc_channel(&fanin, Some(&pki)).await.unwrap(),
    );
    let status = query
        .metrics(fanin::proto::v1::MetricsRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    assert_eq!(
        fanin.stats().await["points"]["received"],
        json!(0),
        "nothing stored"
    );
    let stats = fanin.stats().await;
    assert_eq!(
        stats["unauthenticated"],
        json!({"grpc": 3, "http": 3, "query": 0})
    );
    assert_eq!(stats["requests"], json!({"grpc": 0, "http": 0, "unix": 0}));

    // With the token, both succeed.
    export_grpc(
        grpc_channel(&fanin, Some(&pki)).await.unwrap(),
        Some(&format!("Bearer {TOKEN}")),
    )
    .await
    .expect("the token admits it");
    let admitted = post(Some(format!("bearer {TOKEN}")))
        .await
        .expect("answered");
    assert_eq!(admitted.status, 200, "{admitted:?}");
    assert_eq!(fanin.total("metric=raw.count").await, json!(5));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_text_to_a_tls_port_is_refused_and_stores_nothing() {
    let pki = Pki::new("plain");
    let fanin = start_tls_otlp(&pki).await;
    let body = export("raw")
        .counter("raw.count", 1, 2, 5)
        .build()
        .encode_to_vec();
    let plain = reqwest::Client::new()
        .post(format!("http://{}/v1/metrics", fanin.addresses.http))
        .header("content-type", "application/x-protobuf")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP to the TLS port: {plain:?}");
    let grpc = match grpc_channel(&fanin, None).await {
        Ok(channel) => export_grpc(channel, Some(&format!("Bearer {TOKEN}"))).await,
        Err(error) => Err(tonic::Status::unavailable(error.to_string())),
    };
    assert!(grpc.is_err(), "plain gRPC to the TLS port: {grpc:?}");
    // A client that does not trust the certificate cannot connect either.
    let other = Pki::new("plain-other");
    let untrusted = https_client(&other.ca_pem(), None)
        .get(fanin.addresses.http, "/v1/metrics", None)
        .await;
    assert!(untrusted.is_err(), "{untrusted:?}");
    let stats = fanin.stats().await;
    assert_eq!(stats["points"]["received"], json!(0), "nothing stored");
    // Every refused handshake is counted, by listener.
    let failures = &stats["tls_handshake_failures"];
    assert!(failures["http"].as_u64() >= Some(2), "{stats}");
    assert!(failures["grpc"].as_u64() >= Some(1), "{stats}");
    assert_eq!(
        failures["query"],
        json!(0),
        "the query listener is plain: {stats}"
    );
    fanin.stop().await;
}

/// The query listener with TLS, client certificates from `pki`'s CA, and the readers' token.
async fn start_mutual_tls_query(pki: &Pki) -> TestFanin {
    let mut tls = pki.server_files("query");
    tls.client_ca_file = Some(pki.ca_file());
    start_with(|config| {
        config.query.tls = tls;
        config.query.auth = token(READ_TOKEN);
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_admits_only_valid_client_certificates_and_the_readers_token() {
    let pki = Pki::new("mtls");
    let fanin = start_mutual_tls_query(&pki).await;
    let address = fanin.addresses.query;
    let valid = pki.client(false);
    let client = https_client(&pki.ca_pem(), Some(&valid));
    let stats = client
        .get(address, "/api/v1/stats", Some(READ_TOKEN))
        .await
        .expect("a valid client certificate connects");
    assert_eq!(stats.status, 200, "{stats:?}");
    // Probes need no token; everything else does.
    for path in ["/healthz", "/readyz"] {
        let probe = client.get(address, path, None).await.expect("answered");
        assert_eq!(probe.status, 200, "{path}");
    }
    for path in ["/metrics", "/api/v1/series", "/api/v1/stats"] {
        let refused = client.get(address, path, None).await.expect("answered");
        assert_eq!(refused.status, 401, "{path}");
    }
    let wrong = client
        .get(address, "/metrics", Some(TOKEN))
        .await
        .expect("answered");
    assert_eq!(wrong.status, 401, "the writers' token does not read");

    let expired = pki.client(true);
    let other = Pki::new("mtls-other");
    let untrusted = other.client(false);
    for (what, client) in [
        ("no client certificate", https_client(&pki.ca_pem(), None)),
        (
            "an expired certificate",
            https_client(&pki.ca_pem(), Some(&expired)),
        ),
        (
            "a certificate from another CA",
            https_client(&pki.ca_pem(), Some(&untrusted)),
        ),
    ] {
        // With TLS 1.3 the server checks the client's certificate after the client has
        // finished its side of the handshake, so the refusal may surface at the request.
        let answer = client.get(address, "/healthz", Some(READ_TOKEN)).await;
        assert!(answer.is_err(), "{what} must not be answered: {answer:?}");
    }
    let counted = client
        .get(address, "/api/v1/stats", Some(READ_TOKEN))
        .await
        .expect("answered")
        .json();
    assert_eq!(counted["unauthenticated"]["query"], json!(4));
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_swapped_on_disk_is_served_to_new_connections() {
    let first = Pki::new("swap-first");
    let tls = first.server_files("server");
    let fanin = start_with(|config| config.query.tls = tls.clone()).await;
    let address = fanin.addresses.query;
    // One connection stays open across the swap.
    let mut kept = https_client(&first.ca_pem(), None)
        .connect(address)
        .await
        .expect("the first CA's certificate is served");
    let health = || request("GET", "/healthz", None, Vec::new());
    assert_eq!(kept.send(health()).await.expect("answered").status, 200);

    // The new certificate, from another CA, written over the old files (rename, as
    // certificate managers do).
    let second = Pki::new("swap-second");
    let pair = second.server();
    let cert_file = tls.cert_file.clone().unwrap();
    let key_file = tls.key_file.clone().unwrap();
    let staged = |path: &std::path::Path| {
        let mut staged = path.as_os_str().to_owned();
        staged.push(".new");
        std::path::PathBuf::from(staged)
    };
    std::fs::write(staged(&key_file), pair.key).unwrap();
    std::fs::write(staged(&cert_file), pair.cert).unwrap();
    std::fs::rename(staged(&key_file), &key_file).unwrap();
    std::fs::rename(staged(&cert_file), &cert_file).unwrap();

    let new_ca = https_client(&second.ca_pem(), None);
    eventually(
        Duration::from_secs(30),
        "the new certificate is served",
        || {
            let new_ca = new_ca.clone();
            async move {
                let answer = new_ca.get(address, "/healthz", None).await.ok()?;
                (answer.status == 200).then_some(())
            }
        },
    )
    .await;
    let old_ca = https_client(&first.ca_pem(), None)
        .get(address, "/healthz", None)
        .await;
    assert!(
        old_ca.is_err(),
        "new connections get the new certificate: {old_ca:?}"
    );
    let answer = kept
        .send(health())
        .await
        .expect("the open connection is kept");
    assert_eq!(answer.status, 200);
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_connection_that_sends_no_request_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::new("silent");
    let tls = pki.server_files("server");
    let fanin = start_with(|config| {
        config.query.tls = tls;
        config.connections.header_timeout = Duration::from_millis(300);
    })
    .await;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        common::pki::client_config(&pki.ca_pem(), None),
    ));
    let tcp = tokio::net::TcpStream::connect(fanin.addresses.query)
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut stream = connector
        .connect(name, tcp)
        .await
        .expect("the handshake completes");
    // Nothing is sent: the server closes the connection (idle_timeout is 5 minutes; the
    // header timeout applies from the end of the handshake).
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "closed by the server: {closed:?}"
    );
    fanin.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_library_refuses_an_exposed_listener_as_the_command_does() {
    let mut config = common::test_config();
    config.query.listen = "0.0.0.0:0".parse().unwrap();
    let error = fanin::App::bind(config.clone())
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("`query.listen`"), "{error}");
    // With TLS and a token it is not exposed (the files are read, so make them).
    let pki = Pki::new("library-exposure");
    config.query.tls = pki.server_files("query");
    config.query.auth = token(READ_TOKEN);
    let app = fanin::App::bind(config)
        .await
        .expect("protected, so allowed");
    assert!(app.addresses().query.ip().is_unspecified());
}
