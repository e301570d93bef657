//! `exportctl`: the command line of Contact Export.
//!
//! Exit codes: 0 success; 1 the export ended FAILED, CANCELLED or EXPIRED (`watch`,
//! `create --watch`); 2 an RPC error (`error: <CODE>: <message>`) or bad usage; 3 any other
//! error (connection, file system, checksum).

mod cli;

use std::process::ExitCode;

use clap::Parser;
use contact_export_client::{ClientError, code_name};
use tonic::Status;

use cli::args::Cli;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli::commands::run(cli).await {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

/// Prints the error the way the exit-code table above promises and picks the code.
fn report(err: &anyhow::Error) -> ExitCode {
    match rpc_status(err) {
        Some(status) => match std::error::Error::source(status) {
            // The call failed in the connection (a reset, a TLS refusal of the client's
            // certificate), not as an answer of the server: say what happened.
            Some(transport) if transport.is::<tonic::transport::Error>() => {
                eprintln!("error: connection failed: {}", chain_line(transport));
                ExitCode::from(3)
            }
            _ => {
                eprintln!("error: {}: {}", code_name(status.code()), status.message());
                ExitCode::from(2)
            }
        },
        None => {
            eprintln!("error: {}", chain_line(err.as_ref()));
            ExitCode::from(3)
        }
    }
}

fn rpc_status(err: &anyhow::Error) -> Option<&Status> {
    err.downcast_ref::<Status>()
        .or_else(|| err.downcast_ref::<ClientError>()?.status())
}

/// `outer: inner: root`, like `{:#}`, without repeating a cause that restates the previous
/// one (hyper's connection errors do: "tcp connect error: tcp connect error: refused").
fn chain_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut messages: Vec<String> = Vec::new();
    for cause in std::iter::successors(Some(err), |cause| cause.source()) {
        let message = cause.to_string();
        if messages.last() != Some(&message) {
            messages.push(message);
        }
    }
    messages.join(": ")
}
