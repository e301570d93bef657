//! A crate with a cycle on purpose, for `.ci/module-cycles` to find (CI checks that it does).
pub mod metrics;
pub mod pipeline;
