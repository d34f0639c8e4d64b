//! Test certificates, made when a test runs (never committed): a CA, server certificates for
//! 127.0.0.1 and localhost, and client certificates (valid, expired, from another CA), with
//! clients that trust that CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fanin::config::TlsConfig;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};

/// A certificate authority and the directory its files are written to.
pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
pub struct Pair {
    pub cert: String,
    pub key: String,
}

impl Pki {
    /// A new CA named `name`, its files under the test target's temporary directory.
    pub fn new(name: &str) -> Pki {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("fanin test CA {name}"));
        let key = KeyPair::generate().expect("CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let pki = Pki { dir, ca };
        std::fs::write(pki.ca_file(), pki.ca_pem()).expect("write the CA file");
        pki
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn issue(&self, names: &[&str], common_name: &str, expired: bool) -> Pair {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("certificate params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if expired {
            params.not_before = date_time_ymd(2001, 1, 1);
            params.not_after = date_time_ymd(2002, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Pair {
        self.issue(&["127.0.0.1", "localhost"], "fanin", false)
    }

    /// A client certificate; `expired` makes one whose validity ended in 2002.
    pub fn client(&self, expired: bool) -> Pair {
        self.issue(&["worker.test"], "worker", expired)
    }

    /// Writes a server certificate as `<stem>.crt` and `<stem>.key` and returns the TLS
    /// config naming them.
    pub fn server_files(&self, stem: &str) -> TlsConfig {
        let pair = self.server();
        let (cert_file, key_file) = (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&cert_file, pair.cert).expect("write the certificate");
        std::fs::write(&key_file, pair.key).expect("write the key");
        TlsConfig {
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            ..TlsConfig::default()
        }
    }
}

/// A rustls client configuration trusting `ca_pem`, presenting `client` if given.
pub fn client_config(ca_pem: &str, client: Option<&Pair>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(certificate.expect("CA PEM"))
            .expect("trust the CA");
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    match client {
        None => builder.with_no_client_auth(),
        Some(pair) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(pair.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client certificate PEM"),
                PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).expect("client key PEM"),
            )
            .expect("client certificate"),
    }
}

/// An HTTPS client trusting a CA (and presenting a client certificate, for mutual TLS):
/// each [`Https::connect`] opens one TLS connection, on which requests are sent one by one.
#[derive(Clone)]
pub struct Https {
    connector: tokio_rustls::TlsConnector,
}

/// One HTTP/1.1 connection over TLS.
pub struct HttpsConnection {
    sender: hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
}

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON answer")
    }
}

pub fn https_client(ca_pem: &str, client: Option<&Pair>) -> Https {
    Https {
        connector: tokio_rustls::TlsConnector::from(Arc::new(client_config(ca_pem, client))),
    }
}

impl Https {
    /// Opens a TLS connection to `address` (as `localhost`); the error says why it failed.
    pub async fn connect(&self, address: std::net::SocketAddr) -> Result<HttpsConnection, String> {
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|error| format!("TLS handshake: {error}"))?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|error| format!("HTTP handshake: {error}"))?;
        tokio::spawn(connection);
        Ok(HttpsConnection { sender })
    }

    /// One request on a new connection.
    pub async fn send(
        &self,
        address: std::net::SocketAddr,
        request: http::Request<Vec<u8>>,
    ) -> Result<Answer, String> {
        self.connect(address).await?.send(request).await
    }

    /// `GET path` with `token` as bearer token, if given, on a new connection.
    pub async fn get(
        &self,
        address: std::net::SocketAddr,
        path: &str,
        token: Option<&str>,
    ) -> Result<Answer, String> {
        self.send(address, request("GET", path, token, Vec::new()))
            .await
    }
}

impl HttpsConnection {
    /// Sends a request on this connection and reads the whole answer.
    pub async fn send(&mut self, request: http::Request<Vec<u8>>) -> Result<Answer, String> {
        use http_body_util::BodyExt;
        let request = request.map(|body| http_body_util::Full::new(bytes::Bytes::from(body)));
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|error| format!("request: {error}"))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|error| format!("body: {error}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// A request for [`Https::send`], with `Host: localhost`.
pub fn request(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> http::Request<Vec<u8>> {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    builder.body(body).expect("request")
}

/// An OTLP/HTTP client for the official SDK's exporter, over [`Https`]. The exporter calls
/// it from its own thread, outside any runtime, so each request runs on `runtime`.
#[derive(Clone)]
pub struct SdkHttpsClient {
    pub https: Https,
    pub address: std::net::SocketAddr,
    pub runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for SdkHttpsClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("SdkHttpsClient")
    }
}

#[tonic::async_trait]
impl opentelemetry_http::HttpClient for SdkHttpsClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (https, address) = (self.https.clone(), self.address);
        let (mut parts, body) = request.into_parts();
        // The connection is to `localhost`; the path is what the exporter asked for.
        parts.uri = parts
            .uri
            .path_and_query()
            .map(|path| path.as_str().to_string())
            .unwrap_or_else(|| "/".into())
            .parse()?;
        parts
            .headers
            .insert("host", http::HeaderValue::from_static("localhost"));
        let request = http::Request::from_parts(parts, body.to_vec());
        let answer = self
            .runtime
            .spawn(async move { https.send(address, request).await })
            .await??;
        Ok(http::Response::builder()
            .status(answer.status)
            .body(answer.body)?)
    }
}
