//! `sshvpn`: the sshvpn client.

#![forbid(unsafe_code)]

mod backoff;
mod cli;
mod client_loop;
mod credentials;
mod interface;
mod ssh_client;
mod system_ssh;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    sshvpn_common::logging::init(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sshvpn: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Run the work as a task: the thread in block_on is not a worker, and a data path that
    // hopped between it and the workers would pay a thread wake-up per packet.
    let result = runtime.block_on(async {
        let work = tokio::spawn(async move {
            match cli.command {
                Command::Connect(args) => client_loop::run(args).await,
            }
        });
        work.await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("internal error: {e}")))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sshvpn: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
