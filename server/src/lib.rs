//! Contact Export's server: a gRPC service that exports a workspace's contacts to CSV as a
//! durable background job.
//!
//! # Layout
//!
//! - [`api`]: the gRPC surface. Thin handlers: authenticate, parse the request into a domain
//!   type, call [`exports`], map back. Nothing below it knows about gRPC.
//! - [`exports`]: the export as a record: validation of new requests, the queries that create,
//!   read, list and cancel exports, always scoped to one workspace.
//! - [`pipeline`]: the `process-export` job: four named steps with persisted outputs, run by a
//!   runner that owns memoisation, retries, progress and the job's final status.
//! - [`queue`]: every statement about jobs: claiming (`FOR UPDATE SKIP LOCKED`, a fair share
//!   per workspace), and the fenced writes of a claimed job ([`queue::JobWriter`]): each claim
//!   raises the job's generation, and a write of an older claim fails.
//! - [`worker`]: a bounded pool that claims jobs and runs them under a renewed lease, so a job
//!   whose worker dies is taken up again elsewhere; a panicking job is retried.
//! - [`janitor`]: retention (COMPLETED → EXPIRED), released idempotency keys and the sweep of
//!   objects no export should have, on every replica.
//! - [`events`]: one `LISTEN` connection per process; wakes idle workers and every watcher of an
//!   export when its row changes, on any replica.
//! - [`ids`]: the domain's ids, a type each ([`ids::WorkspaceId`], [`ids::ExportId`], …).
//! - [`storage`], [`mail`], [`auth`], [`db`]: the outside world (OpenDAL, lettre, API tokens,
//!   diesel-async pools and migrations).
//! - [`webhook`]: signed completion webhooks (Standard Webhooks): the secret and signatures, the
//!   operator's allow list of URL prefixes, the event and its delivery with retries.
//! - [`metrics`]: this replica's Prometheus counters, recorded by the worker and the pipeline,
//!   and the database's gauges, served at `/metrics` when asked for.
//! - [`app`]: wires it all into an [`app::Application`] that binds, serves and stops.
//! - [`tokens`]: `exportd token create | list | revoke`, over [`auth`]'s queries.
//! - [`logging`]: the binaries' log output.

pub mod api;
pub mod app;
pub mod auth;
pub mod config;
pub mod db;
pub mod events;
pub mod exports;
pub mod ids;
pub mod janitor;
pub mod logging;
pub mod mail;
pub mod metrics;
pub mod pipeline;
pub mod queue;
pub mod storage;
pub mod tls;
pub mod tokens;
pub mod webhook;
pub mod worker;
