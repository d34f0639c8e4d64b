//! OTLP/gRPC: `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`.
//!
//! tonic decodes the request (gzip and zstd accepted, inflation capped at the size limit) and
//! this service hands it to [`receive`]. Two of tonic's own status codes are wrong for OTLP
//! and are rewritten on the way out by [`remap_status`]:
//!
//! - a message over the size limit is `OUT_OF_RANGE`, which OTLP clients retry forever; OTLP
//!   says `RESOURCE_EXHAUSTED` without RetryInfo (not retried);
//! - a body that is not valid protobuf is `INTERNAL`; OTLP says `INVALID_ARGUMENT`. This
//!   service itself never answers `INTERNAL`, so every `INTERNAL` on it is about the input.

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};

use super::{receive, response};
use crate::store::{RequestError, Store, Transport, Writer};

/// The gRPC `MetricsService` implementation.
#[derive(Clone)]
pub struct GrpcReceiver {
    store: Store,
}

impl GrpcReceiver {
    /// The tonic service, with compression and the size limit set.
    pub fn service(store: Store, max_request_bytes: usize) -> MetricsServiceServer<GrpcReceiver> {
        MetricsServiceServer::new(GrpcReceiver { store })
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .max_decoding_message_size(max_request_bytes)
    }
}

#[tonic::async_trait]
impl MetricsService for GrpcReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let writer = Writer {
            transport: Transport::Grpc,
            peer: request.remote_addr(),
        };
        let outcome = receive(&self.store, request.into_inner(), writer);
        Ok(Response::new(response(&outcome)))
    }
}

/// Rewrites tonic's `OUT_OF_RANGE` (too large) and `INTERNAL` (undecodable) into the codes
/// OTLP prescribes, and counts the request and any whole-request error. Meant for
/// `tower::util::MapResponseLayer` around the gRPC server.
pub fn remap_status<B>(store: &Store, mut response: http::Response<B>) -> http::Response<B> {
    store.stats().request(Transport::Grpc);
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
