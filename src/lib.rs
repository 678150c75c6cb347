//! pgc: a durable task queue in PostgreSQL whose rows carry W3C trace context.
//!
//! The library owns all behaviour: connecting ([`db`]), the schema ([`migrate`]),
//! W3C Trace Context ([`traceparent`]) and enqueueing ([`enqueue`]). The [`cli`] module
//! is the `pgc` command line and the only code that prints.

pub mod bench;
pub mod cli;
pub mod db;
pub mod enqueue;
pub mod error;
pub mod execution;
pub mod handler;
mod idmap;
pub mod jsonb;
pub mod migrate;
pub mod percent;
pub mod sql;
pub mod telemetry;
pub mod tid;
pub mod trace;
pub mod traceparent;
pub mod worker;

pub use error::{Error, Result};
