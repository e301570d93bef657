//! A throwaway PostgreSQL for `exportd dev` and the tests.

pub mod cluster;
