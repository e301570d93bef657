//! Contact Export's development kit: a PostgreSQL of its own and the CRM's data in it, for the
//! places that need a database nobody runs for them.
//!
//! - [`postgres`]: a throwaway PostgreSQL cluster, started from the machine's own server
//!   binaries on a free port of 127.0.0.1 and owned by the process that started it: it stops
//!   on drop, and by itself when that process dies. It works for an ordinary user and for
//!   root, as which containers, CI jobs and many developer machines run (PostgreSQL itself
//!   refuses to run as root).
//! - [`fixture`]: the CRM's tables (in production the CRM owns them and the service only
//!   reads them) and a seeded demo workspace whose contacts hold what makes a CSV export hard.
//!
//! It is the embedded default of `exportd dev` (the service on one machine, with nothing to
//! set up), the database of `exportd-bench`, and the private server of the workspace's tests.
//! Never the service's database in production: durability is switched off, authentication is
//! `trust`, and the service's library does not use this crate; only its binaries and tests do.
//!
//! Made for Linux, where the service is developed, tested and run.

pub mod fixture;
pub mod postgres;

#[cfg(test)]
mod testing;
