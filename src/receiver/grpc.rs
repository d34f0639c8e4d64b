//! OTLP/gRPC: `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`.
//!
//! tonic decodes the request (gzip and zstd accepted, inflation capped at the size limit) and
//! this service hands it to [`receive`]. Two of tonic's own status codes are wrong for OTLP
//! and are rewritten on the way out by [`ExportService`], a wrapper around this service only
//! (the query service on the same listener keeps its own codes):
//!
//! - a message over the size limit is `OUT_OF_RANGE`, which OTLP clients retry forever; OTLP
//!   says `RESOURCE_EXHAUSTED` without RetryInfo (not retried);
//! - a body that is not valid protobuf is `INTERNAL`; OTLP says `INVALID_ARGUMENT`. This
//!   service itself never answers `INTERNAL`, so every `INTERNAL` on it is about the input.

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use std::convert::Infallible;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use super::{receive, response};
use crate::store::{RequestError, Store, Transport, Writer};

/// The gRPC `MetricsService` implementation.
#[derive(Clone)]
pub struct GrpcReceiver {
    store: Store,
}

impl GrpcReceiver {
    /// The tonic service, with compression, the size limit and OTLP's status codes.
    /// `transport` (gRPC over TCP, or the unix socket) is what requests are counted under.
    pub fn service(store: Store, max_request_bytes: usize, transport: Transport) -> ExportService {
        let inner = MetricsServiceServer::new(GrpcReceiver {
            store: store.clone(),
        })
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(max_request_bytes);
        ExportService {
            inner,
            store,
            transport,
        }
    }
}

/// `MetricsService` with every response passed through [`remap_status`].
#[derive(Clone)]
pub struct ExportService {
    inner: MetricsServiceServer<GrpcReceiver>,
    store: Store,
    transport: Transport,
}

impl NamedService for ExportService {
    const NAME: &'static str = <MetricsServiceServer<GrpcReceiver> as NamedService>::NAME;
}

impl tower::Service<http::Request<tonic::body::Body>> for ExportService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        tower::Service::<http::Request<tonic::body::Body>>::poll_ready(&mut self.inner, context)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let store = self.store.clone();
        let transport = self.transport;
        let response = self.inner.call(request);
        Box::pin(async move {
            response
                .await
                .map(|response| remap_status(&store, transport, response))
        })
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        // On the unix socket, tonic hands over the kernel's peer credentials (SO_PEERCRED).
        let unix_peer = request
            .extensions()
            .get::<tonic::transport::server::UdsConnectInfo>()
            .map(|info| info.peer_cred.and_then(|credentials| credentials.pid()));
        let writer = match unix_peer {
            Some(pid) => Writer {
                transport: Transport::Unix,
                peer: None,
                pid,
            },
            None => Writer {
                transport: Transport::Grpc,
                peer: request.remote_addr(),
                pid: None,
            },
        };
        let outcome = receive(&self.store, request.into_inner(), writer);
        Ok(Response::new(response(&outcome)))
    }
}

/// Rewrites tonic's `OUT_OF_RANGE` (too large) and `INTERNAL` (undecodable) into the codes
/// OTLP prescribes, and counts the request and any whole-request error.
pub fn remap_status<B>(
    store: &Store,
    transport: Transport,
    mut response: http::Response<B>,
) -> http::Response<B> {
    store.stats().request(transport);
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map(Code::from_i32);
    let replacement = match code {
        Some(Code::OutOfRange) => Some((Code::ResourceExhausted, RequestError::TooLarge)),
        Some(Code::ResourceExhausted) => {
            store.stats().request_error(RequestError::TooLarge);
            None
        }
        Some(Code::Internal) => Some((Code::InvalidArgument, RequestError::Decode)),
        Some(Code::Unimplemented) => {
            store.stats().request_error(RequestError::Unsupported);
            None
        }
        _ => None,
    };
    if let Some((code, error)) = replacement {
        store.stats().request_error(error);
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from(code as i32));
    }
    response
}
