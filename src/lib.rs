//! fanin: an OTLP metrics aggregation sidecar for pre-fork servers.
//!
//! Workers export OTLP metrics to fanin; fanin keeps every stream apart under its exact
//! identity (the full resource, `service.instance.id` included) and answers queries about
//! them. The data path, one module each:
//!
//! ```text
//! receiver::{grpc, http} -> receiver::otlp (proto -> model) -> store::Store::ingest
//!                           receiver::json (OTLP/JSON -> proto)       |
//!                                                  query (HTTP JSON) <-+
//! ```
//!
//! - [`model`]: the vocabulary: attributes, instances, streams, points.
//! - [`receiver`]: OTLP/gRPC and OTLP/HTTP, limits, errors, `partial_success`.
//! - [`store`]: streams grouped by instance; resets, duplicates, deltas, type conflicts.
//! - [`aggregate`]: space aggregation across instances (pure).
//! - [`query`]: the HTTP query API.
//! - [`config`]: the typed configuration; `config.yaml` is the default.
//! - [`app`]: binds the listeners and runs the servers until shutdown.
//! - [`shim`]: the fork-aware client side, a meter provider for pre-fork workers.
//! - [`sys`]: `fork` and `pthread_atfork`, the crate's only unsafe code.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod aggregate;
pub mod app;
pub mod check;
pub mod config;
pub mod model;
pub mod outcome;
pub mod proto;
pub mod query;
pub mod receiver;
pub mod shim;
pub mod store;
pub mod sys;

pub use app::{Addresses, App, AppError};
pub use config::{Config, ConfigError};
