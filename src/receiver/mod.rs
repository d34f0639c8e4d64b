//! Receivers: OTLP over gRPC (TCP or the unix socket) and HTTP, decoded into the model and
//! handed to the store.
//!
//! The transports (`grpc`, `http`) only move bytes and map errors to their wire. Every
//! request reaches the store as one borrowed [`view::Request`]: protobuf bodies go to
//! [`receive_protobuf`], where `wire` reads them in place; what `wire` declines, prost
//! decodes, and `json` turns OTLP/JSON into the same prost messages, which
//! `view::Request::of_message` looks at. `otlp::store_view` walks the view and holds the
//! rules for metrics and points, so there is one walk and one home for each rule.
//! A request that decodes always succeeds; points that cannot be stored are reported in
//! `partial_success`. [`IngestError`] is only for requests refused as a whole.

pub mod budget;
pub mod grpc;
pub mod http;
pub mod json;
pub mod otlp;
pub mod view;
pub mod wire;

use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};

use prost::Message;

use crate::outcome::Outcome;
use crate::store::{NewBlocks, RequestError, Store, Writer};

/// Why a whole request was refused. Each maps to one HTTP status and one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("body is not a valid OTLP protobuf ExportMetricsServiceRequest: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("body is not a valid OTLP/JSON ExportMetricsServiceRequest: {0}")]
    Json(#[from] json::JsonError),
    #[error("request body is larger than the limit of {limit} bytes{}", if *.decompressed { " after decompression" } else { "" })]
    TooLarge { limit: usize, decompressed: bool },
    #[error("content type {0:?} is not supported; send application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    #[error("content encoding {0:?} is not supported; send gzip, deflate or no encoding")]
    UnsupportedEncoding(String),
    #[error("body is not valid {encoding} data: {source}")]
    Decompress {
        encoding: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read the request body: {0}")]
    Body(#[source] axum::Error),
    #[error(transparent)]
    Busy(#[from] budget::Exhausted),
    #[error("the request body did not arrive within {0:?} (receivers.otlp.body_timeout)")]
    Timeout(std::time::Duration),
}

impl IngestError {
    /// The counter this error is recorded under.
    pub fn kind(&self) -> RequestError {
        match self {
            IngestError::Decode(_)
            | IngestError::Json(_)
            | IngestError::Decompress { .. }
            | IngestError::Body(_) => RequestError::Decode,
            IngestError::TooLarge { .. } => RequestError::TooLarge,
            IngestError::Busy(_) => RequestError::Busy,
            IngestError::Timeout(_) => RequestError::Timeout,
            IngestError::UnsupportedMediaType(_) | IngestError::UnsupportedEncoding(_) => {
                RequestError::Unsupported
            }
        }
    }
}

/// Stores a decoded request's points and says what happened to them.
pub fn receive(store: &Store, request: &ExportMetricsServiceRequest, writer: Writer) -> Outcome {
    logged(otlp::store_message(store, request, writer), writer)
}

/// The largest body read with the store's known attribute blocks; a larger one (rare:
/// workers export a few hundred KiB at a time) is read without them.
pub const KNOWN_BLOCKS_BODY_BYTES: usize = 1024 * 1024;

/// Stores a protobuf-encoded request. It is read in place ([`wire`]), with the store's
/// known attribute blocks (`store::KnownBlocks`) standing in for the runs of attribute bytes
/// seen before; the new ones it stored are learnt afterwards. A request the in-place reader
/// declines is decoded by `prost` instead, which also words the error when the body is not
/// a valid request.
///
/// # Errors
/// [`IngestError::Decode`] when the body is not a valid `ExportMetricsServiceRequest`;
/// nothing is stored then.
pub fn receive_protobuf(
    store: &Store,
    body: &[u8],
    writer: Writer,
) -> Result<Outcome, IngestError> {
    // A large body is read without the known blocks: holding their read guard across a
    // long request would make every other receiver wait behind the next one that learns.
    let known = (body.len() <= KNOWN_BLOCKS_BODY_BYTES).then(|| store.known_blocks());
    let mut new_blocks = known.as_deref().map(NewBlocks::for_table);
    let read = match known.as_deref() {
        Some(known) => wire::parse_known(body, known),
        None => wire::parse(body),
    };
    let outcome = match read {
        Ok(request) => otlp::store_view(store, &request, writer, new_blocks.as_mut()),
        Err(declined) => {
            drop(known);
            tracing::trace!(reason = declined.0, "Request read by prost");
            let request = ExportMetricsServiceRequest::decode(body)?;
            return Ok(receive(store, &request, writer));
        }
    };
    drop(known);
    if let Some(new_blocks) = new_blocks {
        store.learn_blocks(new_blocks);
    }
    Ok(logged(outcome, writer))
}

fn logged(outcome: Outcome, writer: Writer) -> Outcome {
    if outcome.rejected_total() > 0 {
        tracing::debug!(
            rejected = outcome.rejected_total(),
            peer = ?writer.peer,
            transport = writer.transport.as_str(),
            "Rejected data points"
        );
    }
    outcome
}

/// The OTLP response for an outcome: `partial_success` unset on full success.
pub fn response(outcome: &Outcome) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: outcome
            .partial_success()
            .map(
                |(rejected_data_points, error_message)| ExportMetricsPartialSuccess {
                    rejected_data_points,
                    error_message,
                },
            ),
    }
}
