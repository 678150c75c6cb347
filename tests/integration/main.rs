//! Integration tests: the real `pgc` binary and library against a real PostgreSQL.
//!
//! One database per test, cloned from a migrated template, dropped on success and kept on
//! failure for inspection. `scripts/test` makes sure a server is there; without one these
//! tests fail, they never skip.

mod support;

mod batch;
mod cli;
mod docs;
mod enqueue;
mod migrate;
mod schema;
mod step;
mod telemetry;
mod trace;
mod work;
