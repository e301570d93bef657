//! The pieces of `exportctl`: arguments, commands, output, progress bars and file saving.

pub mod args;
pub mod commands;
pub mod output;
pub mod progress;
pub mod save;
