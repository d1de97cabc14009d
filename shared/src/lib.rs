//! Everything the storage protocol demands, written once.
//!
//! A backend implements [`ValueBackend`] or [`ContextBackend`] on already
//! validated, typed inputs; [`server::serve_value`] / [`server::serve_context`]
//! wrap it in the Hub's gRPC service plus health, reflection, metrics, TLS and
//! graceful shutdown. No store SDK is ever a dependency of this crate.

pub mod admin;
pub mod backend;
pub mod client;
mod coalesce;
pub mod config;
pub mod engine;
pub mod error;
pub mod grpc;
pub mod metrics;
mod oversize;
pub mod proto;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod types;
pub mod validate;

pub use backend::{Backend, ContextBackend, Describe, LockInfo, ValueBackend};
pub use error::{Error, ErrorKind, Result};
pub use types::{Context, Owner, Revision, Secret, TypeInstanceId, Value};
