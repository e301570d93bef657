pub mod runner;
pub use runner::Run;
