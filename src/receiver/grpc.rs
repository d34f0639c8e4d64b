//! OTLP/gRPC: `opentelemetry.proto.collector.metrics.v1.MetricsService/Export`.
//!
//! tonic does the gRPC framing (gzip and zstd accepted, inflation capped at the size limit)
//! and hands over the message as bytes ([`RawCodec`]); [`receive_protobuf`] reads them in
//! place, as the HTTP receiver does. Two of tonic's own status codes are wrong for OTLP and
//! are rewritten on the way out by [`remap_status`]:
//!
//! - a message over the size limit is `OUT_OF_RANGE`, which OTLP clients retry forever; OTLP
//!   says `RESOURCE_EXHAUSTED` without RetryInfo (not retried);
//! - a body tonic cannot unframe or inflate is `INTERNAL`; OTLP says `INVALID_ARGUMENT`.
//!   This service itself never answers `INTERNAL`, so every `INTERNAL` on it is about the
//!   input.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};

use super::budget::{Budget, SharedHeld};
use super::{receive_protobuf, response};
use crate::security::Guard;
use crate::store::{RequestError, Store, Transport, Writer};

/// The one method this service answers.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// How a gRPC listener takes `Export` requests.
#[derive(Clone, Debug)]
pub struct ExportSettings {
    /// Bound on a message after decompression.
    pub max_request_bytes: usize,
    /// The budget for requests in flight, shared with the other listeners.
    pub budget: Budget,
    /// How long a request's body may take to arrive.
    pub body_timeout: Duration,
}

/// The gRPC `MetricsService`, answering `Export` with OTLP's status codes.
#[derive(Clone)]
pub struct ExportService {
    store: Store,
    transport: Transport,
    settings: ExportSettings,
    /// The listener's token check, when it has a token.
    guard: Option<Arc<Guard>>,
}

impl ExportService {
    /// The service; `transport` (gRPC over TCP, or the unix socket) is what requests are
    /// counted under.
    pub fn new(store: Store, settings: ExportSettings, transport: Transport) -> ExportService {
        ExportService {
            store,
            transport,
            settings,
            guard: None,
        }
    }

    /// The service answering `UNAUTHENTICATED`, before reading a byte of the body, to a
    /// request without the guard's token (when it has one).
    pub fn guarded(mut self, guard: Arc<Guard>) -> ExportService {
        self.guard = guard.authenticates().then_some(guard);
        self
    }
}

impl NamedService for ExportService {
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
}

impl tower::Service<http::Request<tonic::body::Body>> for ExportService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send + 'static>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                let response = Status::unimplemented(format!(
                    "{} is not a method of this service; fanin receives metrics only",
                    request.uri().path()
                ))
                .into_http();
                return Ok(remap_status(&service.store, service.transport, response));
            }
            if let Some(guard) = &service.guard
                && let Err(refusal) = guard.check(request.headers(), service.store.stats())
            {
                return Ok(Status::unauthenticated(refusal.to_string()).into_http());
            }
            let settings = &service.settings;
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(settings.max_request_bytes);
            // The body takes budget for each frame as it arrives; what the request holds is
            // given back once it has been answered (when `held` and the body are dropped).
            let held = SharedHeld::default();
            let request = request.map(|body| {
                tonic::body::Body::new(BudgetedBody::new(
                    body,
                    settings.budget.clone(),
                    held.clone(),
                    settings.body_timeout,
                ))
            });
            let (store, transport) = (service.store.clone(), service.transport);
            let export = tower::service_fn(move |request: Request<Bytes>| {
                let store = store.clone();
                async move { export(&store, transport, request) }
            });
            let response = grpc.unary(export, request).await;
            drop(held);
            Ok(remap_status(&service.store, service.transport, response))
        })
    }
}

/// Stores one `Export` request and answers it.
fn export(
    store: &Store,
    transport: Transport,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
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
            transport,
            peer: request.remote_addr(),
            pid: None,
        },
    };
    // The only error here is a body that is not a valid request.
    receive_protobuf(store, request.get_ref(), writer)
        .map(|outcome| Response::new(Bytes::from(response(&outcome).encode_to_vec())))
        .map_err(|error| Status::invalid_argument(error.to_string()))
}

/// A gRPC codec that passes messages through as bytes, both ways: the server reads requests
/// in place and encodes its responses itself; clients (tests, the load generator) send bytes
/// they built, malformed ones included. Decoding splits tonic's buffer off, without a copy.
#[derive(Clone, Copy, Debug, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buffer.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buffer.copy_to_bytes(buffer.remaining())))
    }
}

/// A request body that takes budget for each data frame before passing it on, and gives
/// up when the budget has no room (`UNAVAILABLE`, which OTLP exporters retry) or the body
/// takes longer than the body timeout (`DEADLINE_EXCEEDED`). tonic reports a body error
/// that is a `Status` as that status.
struct BudgetedBody {
    inner: tonic::body::Body,
    budget: Budget,
    held: SharedHeld,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl BudgetedBody {
    fn new(
        inner: tonic::body::Body,
        budget: Budget,
        held: SharedHeld,
        timeout: Duration,
    ) -> BudgetedBody {
        BudgetedBody {
            inner,
            budget,
            held,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }
}

impl http_body::Body for BudgetedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.inner).poll_frame(context) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(exhausted) = this.held.take(&this.budget, data.len())
                {
                    return Poll::Ready(Some(Err(Status::unavailable(exhausted.to_string()))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(context) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                    "the request body did not arrive within {:?} (receivers.otlp.body_timeout)",
                    this.timeout
                ))))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
        Some(Code::InvalidArgument) => {
            store.stats().request_error(RequestError::Decode);
            None
        }
        Some(Code::Unimplemented) => {
            store.stats().request_error(RequestError::Unsupported);
            None
        }
        Some(Code::Unavailable) => {
            store.stats().request_error(RequestError::Busy);
            None
        }
        Some(Code::DeadlineExceeded) => {
            store.stats().request_error(RequestError::Timeout);
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
