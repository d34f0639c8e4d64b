//! OTLP/HTTP: `POST /v1/metrics` with a protobuf or JSON body.
//!
//! The body goes through the pipeline the OTLP/HTTP spec implies: media type (415 if
//! neither protobuf nor JSON), content encoding (415 if unknown), size limit on the raw body
//! (413), decompression through a capped reader (413 once the inflated size passes the
//! limit, so a gzip bomb never allocates more than the limit), decode (400), store, 200.
//! Every answer is encoded like the request: protobuf in, protobuf out; JSON in, JSON out;
//! errors are a `google.rpc.Status` in that encoding.
//!
//! Large bodies, raw or once inflated, are decompressed, decoded and stored on tokio's
//! blocking pool (`BLOCKING_BODY_BYTES`); small ones inline, where a thread hand-off would
//! cost more than the work.

use std::io::Read;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use prost::Message;

use super::budget::{Budget, Held};
use super::{IngestError, json, receive, receive_protobuf, response};
use crate::outcome::Outcome;
use crate::store::{Store, Transport, Writer};

/// The path OTLP exporters post metrics to.
pub const METRICS_PATH: &str = "/v1/metrics";

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// How the request (and so the response) is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

/// How the body is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    Deflate,
}

/// How the OTLP/HTTP receiver takes requests.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Bound on the body, before and after decompression.
    pub max_request_bytes: usize,
    /// The budget for requests in flight, shared with the other listeners.
    pub budget: Budget,
    /// How long a body may take to arrive.
    pub body_timeout: Duration,
}

#[derive(Clone)]
struct Receiver {
    store: Store,
    settings: HttpSettings,
}

/// The OTLP/HTTP router.
pub fn router(store: Store, settings: HttpSettings) -> Router {
    Router::new()
        .route(METRICS_PATH, post(export))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(Receiver { store, settings })
}

/// Raw bodies above this size, and compressed bodies that inflate past it, are decompressed,
/// decoded and stored on tokio's blocking pool: on an async worker, tens of milliseconds of
/// decoding would stall every other connection that worker serves. A compressed body is
/// inflated on the async worker up to this size first: most bodies end before it, and a
/// thread hand-off per request costs more than their work.
const BLOCKING_BODY_BYTES: usize = 512 * 1024;

async fn export(State(receiver): State<Receiver>, request: Request) -> Response {
    receiver.store.stats().request(Transport::Http);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| *address);
    // Until the media type is known, errors are answered in JSON: it is readable by people
    // and is one of the two encodings OTLP defines.
    let encoding = match media_type(request.headers()) {
        Ok(encoding) => encoding,
        Err(error) => return failure(&receiver.store, Encoding::Json, error),
    };
    // What the request holds of the budget, given back when it has been answered.
    let mut held = Held::default();
    let (raw, compression) = match read(&receiver, request, &mut held).await {
        Ok(read) => read,
        Err(error) => return failure(&receiver.store, encoding, error),
    };
    let writer = Writer {
        transport: Transport::Http,
        peer,
        pid: None,
    };
    let limit = receiver.settings.max_request_bytes;
    let budget = receiver.settings.budget.clone();
    // Up to BLOCKING_BODY_BYTES are inflated here; a body that turns out larger is finished
    // on the blocking pool, with the rest of its work.
    let large = raw.len() > BLOCKING_BODY_BYTES;
    let mut inflation = Inflation::new(raw, compression, limit);
    let blocking = large
        || match inflation.inflate(&budget, &mut held, BLOCKING_BODY_BYTES) {
            Ok(done) => !done,
            Err(error) => return failure(&receiver.store, encoding, error),
        };
    let store = receiver.store.clone();
    let work = move || -> Result<Outcome, IngestError> {
        let body = inflation.finish(&budget, &mut held)?;
        match encoding {
            Encoding::Protobuf => receive_protobuf(&store, &body, writer),
            Encoding::Json => Ok(receive(&store, &json::decode_request(&body)?, writer)),
        }
    };
    let result = if blocking {
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            Err(error) => {
                tracing::error!(%error, "Decoding an OTLP/HTTP request failed unexpectedly");
                return status_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    encoding,
                    tonic::Code::Internal,
                    "fanin failed to process the request",
                );
            }
        }
    } else {
        work()
    };
    match result {
        Ok(outcome) => success(encoding, &outcome),
        Err(error) => failure(&receiver.store, encoding, error),
    }
}

/// Checks the content encoding and the declared size, then reads the body within the limit,
/// the budget and the body timeout.
async fn read(
    receiver: &Receiver,
    request: Request,
    held: &mut Held,
) -> Result<(Bytes, Compression), IngestError> {
    let limit = receiver.settings.max_request_bytes;
    let compression = content_encoding(request.headers())?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(IngestError::TooLarge {
            limit,
            decompressed: false,
        });
    }
    let settings = &receiver.settings;
    let body = read_body(request.into_body(), limit, &settings.budget, held);
    let raw = tokio::time::timeout(settings.body_timeout, body)
        .await
        .map_err(|_| IngestError::Timeout(settings.body_timeout))??;
    Ok((raw, compression))
}

/// Reads the body frame by frame, taking budget for each before keeping it.
async fn read_body(
    mut body: Body,
    limit: usize,
    budget: &Budget,
    held: &mut Held,
) -> Result<Bytes, IngestError> {
    let too_large = IngestError::TooLarge {
        limit,
        decompressed: false,
    };
    // Frames are kept as they came: a body that arrives in one frame is not copied.
    let mut frames: Vec<Bytes> = Vec::new();
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| IngestError::Body(axum::Error::new(error)))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if length + data.len() > limit {
            return Err(too_large);
        }
        budget.take(held, data.len())?;
        length += data.len();
        frames.push(data);
    }
    if frames.len() <= 1 {
        return Ok(frames.pop().unwrap_or_default());
    }
    let mut joined = BytesMut::with_capacity(length);
    for frame in frames {
        joined.extend_from_slice(&frame);
    }
    Ok(joined.freeze())
}

/// Bytes inflated between two takes of the budget.
const INFLATE_CHUNK: usize = 64 * 1024;

/// A body being inflated, reading at most one byte past the limit so an over-limit body is
/// detected without ever holding more than `limit + 1` bytes, and taking budget for the
/// inflated bytes as they come. It goes in steps, so that the first part can be inflated on
/// the async worker and only a larger body moves to the blocking pool.
struct Inflation {
    state: InflationState,
    limit: usize,
}

enum InflationState {
    /// Not compressed: the body as read.
    Plain(Bytes),
    Inflating {
        reader: std::io::Take<Box<dyn Read + Send>>,
        inflated: Vec<u8>,
        encoding: &'static str,
        done: bool,
    },
}

impl Inflation {
    fn new(raw: Bytes, compression: Compression, limit: usize) -> Inflation {
        // One allocation for the whole body where its size is known: growing a chunk at a
        // time copied the body again at every doubling.
        let expected = inflated_size_hint(&raw, compression, limit);
        let (reader, encoding): (Box<dyn Read + Send>, _) = match compression {
            Compression::None => {
                return Inflation {
                    state: InflationState::Plain(raw),
                    limit,
                };
            }
            Compression::Gzip => (
                Box::new(flate2::bufread::MultiGzDecoder::new(raw.reader())),
                "gzip",
            ),
            // HTTP's "deflate" is the zlib format, but some clients send raw deflate data;
            // the zlib header (CMF/FLG with a checksum divisible by 31) tells them apart.
            Compression::Deflate if is_zlib(&raw) => (
                Box::new(flate2::bufread::ZlibDecoder::new(raw.reader())),
                "deflate",
            ),
            Compression::Deflate => (
                Box::new(flate2::bufread::DeflateDecoder::new(raw.reader())),
                "deflate",
            ),
        };
        Inflation {
            state: InflationState::Inflating {
                reader: reader.take(limit as u64 + 1),
                inflated: Vec::with_capacity(expected.div_ceil(INFLATE_CHUNK) * INFLATE_CHUNK),
                encoding,
                done: false,
            },
            limit,
        }
    }

    /// Inflates until the body ends or `until` bytes are inflated; true when it has ended.
    fn inflate(
        &mut self,
        budget: &Budget,
        held: &mut Held,
        until: usize,
    ) -> Result<bool, IngestError> {
        let InflationState::Inflating {
            reader,
            inflated,
            encoding,
            done,
        } = &mut self.state
        else {
            return Ok(true);
        };
        while !*done && inflated.len() < until {
            budget.take(held, INFLATE_CHUNK)?;
            let start = inflated.len();
            inflated.resize(start + INFLATE_CHUNK, 0);
            let mut filled = start;
            while filled < inflated.len() {
                match reader.read(&mut inflated[filled..]) {
                    Ok(0) => break,
                    Ok(read) => filled += read,
                    Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(source) => {
                        let encoding = *encoding;
                        return Err(IngestError::Decompress { encoding, source });
                    }
                }
            }
            inflated.truncate(filled);
            *done = filled < start + INFLATE_CHUNK;
        }
        Ok(*done)
    }

    /// Inflates the rest; the whole body, within the limit.
    fn finish(mut self, budget: &Budget, held: &mut Held) -> Result<Bytes, IngestError> {
        self.inflate(budget, held, usize::MAX)?;
        match self.state {
            InflationState::Plain(raw) => Ok(raw),
            InflationState::Inflating { inflated, .. } if inflated.len() > self.limit => {
                Err(IngestError::TooLarge {
                    limit: self.limit,
                    decompressed: true,
                })
            }
            InflationState::Inflating { inflated, .. } => Ok(Bytes::from(inflated)),
        }
    }
}

/// Most a hint may expect a body to inflate by: protobuf compresses about 5 to 10 times, and
/// a larger claim (the gzip trailer is the sender's word) only makes the buffer grow as it
/// fills, as it would without a hint.
const MAX_HINTED_RATIO: usize = 32;

/// How many bytes the body should inflate to, for sizing the buffer: gzip's trailer gives the
/// (last member's) size modulo 2^32; for deflate, nothing. Never more than `limit + 1`.
fn inflated_size_hint(raw: &[u8], compression: Compression, limit: usize) -> usize {
    let stated = match (compression, raw.last_chunk::<4>()) {
        (Compression::Gzip, Some(trailer)) => u32::from_le_bytes(*trailer) as usize,
        _ => 0,
    };
    // One byte past the limit is how an over-limit body is told; a chunk more lets the read
    // that finds the end fit too.
    stated
        .min(raw.len().saturating_mul(MAX_HINTED_RATIO))
        .min(limit)
        .saturating_add(1)
}

fn is_zlib(data: &[u8]) -> bool {
    match data {
        [cmf, flg, ..] => cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

fn media_type(headers: &HeaderMap) -> Result<Encoding, IngestError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(value);
    // Parameters such as "; charset=utf-8" do not change the encoding.
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        PROTOBUF => Ok(Encoding::Protobuf),
        JSON => Ok(Encoding::Json),
        _ => Err(IngestError::UnsupportedMediaType(text.into_owned())),
    }
}

fn content_encoding(headers: &HeaderMap) -> Result<Compression, IngestError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(Compression::None);
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    match text.trim().to_ascii_lowercase().as_str() {
        "" | "identity" | "none" => Ok(Compression::None),
        "gzip" | "x-gzip" => Ok(Compression::Gzip),
        "deflate" => Ok(Compression::Deflate),
        _ => Err(IngestError::UnsupportedEncoding(text.into_owned())),
    }
}

fn success(encoding: Encoding, outcome: &Outcome) -> Response {
    match encoding {
        Encoding::Protobuf => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, PROTOBUF)],
            response(outcome).encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => {
            // Canonical OTLP/JSON: int64 as a decimal string, partialSuccess left out when
            // everything was accepted without a warning.
            let body = match outcome.partial_success() {
                None => serde_json::json!({}),
                Some((rejected, message)) => serde_json::json!({
                    "partialSuccess": {
                        "rejectedDataPoints": rejected.to_string(),
                        "errorMessage": message,
                    }
                }),
            };
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, JSON)],
                body.to_string(),
            )
                .into_response()
        }
    }
}

fn failure(store: &Store, encoding: Encoding, error: IngestError) -> Response {
    store.stats().request_error(error.kind());
    tracing::debug!(%error, "Refused OTLP/HTTP request");
    let (status, code) = match &error {
        IngestError::TooLarge { .. } => (
            StatusCode::PAYLOAD_TOO_LARGE,
            tonic::Code::ResourceExhausted,
        ),
        IngestError::Busy(_) => {
            let mut response = status_response(
                StatusCode::SERVICE_UNAVAILABLE,
                encoding,
                tonic::Code::Unavailable,
                &error.to_string(),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return response;
        }
        IngestError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, tonic::Code::DeadlineExceeded),
        IngestError::UnsupportedMediaType(_) | IngestError::UnsupportedEncoding(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            tonic::Code::InvalidArgument,
        ),
        _ => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
    };
    status_response(status, encoding, code, &error.to_string())
}

/// A `google.rpc.Status` body, in the request's encoding, as OTLP/HTTP requires for every
/// 4xx and 5xx answer.
fn status_response(
    status: StatusCode,
    encoding: Encoding,
    code: tonic::Code,
    message: &str,
) -> Response {
    match encoding {
        Encoding::Protobuf => {
            let body = tonic_types::Status {
                code: code as i32,
                message: message.to_string(),
                details: Vec::new(),
            };
            (
                status,
                [(header::CONTENT_TYPE, PROTOBUF)],
                body.encode_to_vec(),
            )
                .into_response()
        }
        Encoding::Json => {
            let body = serde_json::json!({ "code": code as i32, "message": message });
            (status, [(header::CONTENT_TYPE, JSON)], body.to_string()).into_response()
        }
    }
}

async fn not_found(request: Request) -> Response {
    let message = format!(
        "no OTLP endpoint at {}; fanin takes metrics at POST {METRICS_PATH}",
        request.uri().path()
    );
    status_response(
        StatusCode::NOT_FOUND,
        Encoding::Json,
        tonic::Code::NotFound,
        &message,
    )
}

async fn method_not_allowed(request: Request) -> Response {
    let message = format!(
        "{} is not allowed here; send metrics with POST",
        request.method()
    );
    let mut response = status_response(
        StatusCode::METHOD_NOT_ALLOWED,
        Encoding::Json,
        tonic::Code::InvalidArgument,
        &message,
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole [`Inflation`] with all the budget it may want.
    fn inflate(raw: Bytes, compression: Compression, limit: usize) -> Result<Bytes, IngestError> {
        Inflation::new(raw, compression, limit).finish(&Budget::new(1 << 30), &mut Held::default())
    }
    use std::io::Write;

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(data).expect("write to memory");
        Bytes::from(encoder.finish().expect("finish in memory"))
    }

    #[test]
    fn a_body_inflates_in_steps_to_the_same_bytes() {
        let data: Vec<u8> = (0..3 * INFLATE_CHUNK as u32)
            .map(|n| (n % 251) as u8)
            .collect();
        let (budget, mut held) = (Budget::new(1 << 30), Held::default());
        let mut inflation = Inflation::new(gzip(&data), Compression::Gzip, 1 << 20);
        assert!(
            !inflation
                .inflate(&budget, &mut held, INFLATE_CHUNK)
                .expect("inflates")
        );
        let body = inflation.finish(&budget, &mut held).expect("inflates");
        assert_eq!(&body[..], &data[..]);

        let mut small = Inflation::new(gzip(b"hello"), Compression::Gzip, 1 << 20);
        assert!(
            small
                .inflate(&budget, &mut held, INFLATE_CHUNK)
                .expect("inflates")
        );
        assert_eq!(
            &small.finish(&budget, &mut held).expect("inflates")[..],
            b"hello"
        );
    }

    #[test]
    fn gzip_inflates_within_limit() {
        let body = inflate(gzip(b"hello"), Compression::Gzip, 5).expect("fits");
        assert_eq!(&body[..], b"hello");
    }

    #[test]
    fn gzip_bomb_stops_at_limit() {
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20, "compressed to {} bytes", bomb.len());
        let error = inflate(bomb, Compression::Gzip, 1 << 20).expect_err("over the limit");
        assert!(matches!(
            error,
            IngestError::TooLarge {
                decompressed: true,
                ..
            }
        ));
    }

    #[test]
    fn deflate_accepts_zlib_and_raw() {
        let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        zlib.write_all(b"abc").expect("write");
        let zlib = Bytes::from(zlib.finish().expect("finish"));
        assert_eq!(
            &inflate(zlib, Compression::Deflate, 10).expect("zlib")[..],
            b"abc"
        );
        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(b"abc").expect("write");
        let raw = Bytes::from(raw.finish().expect("finish"));
        assert_eq!(
            &inflate(raw, Compression::Deflate, 10).expect("raw")[..],
            b"abc"
        );
    }

    #[test]
    fn gzip_members_inflate_whole_though_the_trailer_names_the_last() {
        // The buffer is sized from the last member's trailer (3 bytes): it grows past it.
        let first = vec![7u8; 300_000];
        let mut body = gzip(&first).to_vec();
        body.extend_from_slice(&gzip(b"end"));
        let inflated = inflate(Bytes::from(body), Compression::Gzip, 1 << 20).expect("fits");
        assert_eq!(inflated.len(), 300_003);
        assert_eq!(&inflated[300_000..], b"end");
        assert!(inflated[..300_000].iter().all(|byte| *byte == 7));
    }

    #[test]
    fn a_gzip_trailer_is_only_a_hint() {
        assert_eq!(
            inflated_size_hint(&gzip(b"hello"), Compression::Gzip, 100),
            6
        );
        // A claim past the limit, or past what the body could hold, is not believed.
        let mut lying = gzip(b"hello").to_vec();
        let at = lying.len() - 4;
        lying[at..].copy_from_slice(&u32::MAX.to_le_bytes());
        let hint = inflated_size_hint(&lying, Compression::Gzip, 1 << 30);
        assert_eq!(hint, lying.len() * MAX_HINTED_RATIO + 1);
        assert_eq!(inflated_size_hint(&lying, Compression::Gzip, 10), 11);
        assert_eq!(inflated_size_hint(b"", Compression::Gzip, 10), 1);
        // A wrong size in the trailer is the sender's error, refused as corrupt.
        let error = inflate(Bytes::from(lying), Compression::Gzip, 1 << 30).expect_err("lies");
        assert!(matches!(error, IngestError::Decompress { .. }));
    }

    #[test]
    fn corrupt_gzip_is_a_decode_error() {
        let error = inflate(
            Bytes::from_static(b"\x1f\x8bnot gzip"),
            Compression::Gzip,
            100,
        )
        .expect_err("corrupt");
        assert!(matches!(error, IngestError::Decompress { .. }));
    }

    #[track_caller]
    fn check_media_type(value: &str, expected: Option<Encoding>) {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(value).expect("header"),
        );
        assert_eq!(media_type(&headers).ok(), expected);
    }

    #[test]
    fn media_types() {
        check_media_type("application/x-protobuf", Some(Encoding::Protobuf));
        check_media_type("application/json; charset=utf-8", Some(Encoding::Json));
        check_media_type("Application/JSON", Some(Encoding::Json));
        check_media_type("text/plain", None);
        assert!(media_type(&HeaderMap::new()).is_err());
    }
}
