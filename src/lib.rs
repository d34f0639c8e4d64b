//! fanin: an OTLP metrics aggregation sidecar for pre-fork servers.
//!
//! Workers export OTLP metrics to fanin; fanin keeps every stream apart under its exact
//! identity (the full resource, `service.instance.id` included), accounts for each writer's
//! part of a stream, and answers queries about the totals. `docs/design.md` says what it
//! promises, `ARCHITECTURE.md` where each part lives. The data path, one module each:
//!
//! ```text
//! receiver::{grpc, http} -> receiver::wire (protobuf, read in place)   -+
//!                           receiver::json -> prost -> view::of_message -+-> receiver::otlp::store_view
//!                                                                           (one walk, the point rules)
//!                                                                               |
//!                                              store::Store (instances, streams, runs, chains)
//!                                                                               |
//!                            query (HTTP JSON, /metrics, gRPC) <- aggregate::Space
//! ```
//!
//! - [`model`]: the vocabulary: attributes, instances, streams, points, numbers.
//! - [`receiver`]: OTLP/gRPC and OTLP/HTTP, limits, errors, the view every request becomes.
//! - [`outcome`]: what became of a request's points: accepted, rejected, dropped.
//! - [`store`]: streams grouped by instance; runs, chains, liveness, collisions.
//! - [`aggregate`]: space aggregation across instances (pure).
//! - [`query`]: the query API over HTTP (JSON, Prometheus text) and gRPC.
//! - [`proto`]: fanin's own messages and gRPC service (`proto/fanin/v1/query.proto`).
//! - [`config`]: the typed configuration; `config.yaml` is the default.
//! - [`app`]: binds the listeners and runs the servers until shutdown.
//! - [`serve`]: what every TCP listener does with connections (caps, timeouts, back-off,
//!   the TLS handshake).
//! - [`storage`]: the snapshot under `storage.path`, written at an interval, restored at start.
//! - [`export`]: the totals sent upstream (OTLP, Prometheus remote-write), queued and retried.
//! - [`security`]: who may connect and send: TLS certificates and bearer tokens, reloaded.
//! - [`shim`]: the fork-aware client side, a meter provider for pre-fork workers.
//! - [`check`]: `fanin check`, which forks workers and proves what fanin saw.
//! - [`sys`]: `fork` and `pthread_atfork`, the crate's only unsafe code.

pub mod aggregate;
pub mod app;
pub mod check;
pub mod config;
pub mod export;
pub mod model;
pub mod outcome;
pub mod proto;
pub mod query;
pub mod receiver;
pub mod security;
pub mod serve;
pub mod shim;
pub mod storage;
pub mod store;
pub mod sys;

pub use app::{Addresses, App, AppError};
pub use config::{Config, ConfigError};
