//! fanin: an OTLP metrics aggregation sidecar for pre-fork servers.
pub mod config;
pub mod model;
pub mod outcome;
pub mod receiver;
