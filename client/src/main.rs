//! `sshvpn`: the sshvpn client.

// Only the namespace helper needs unsafe code (taking ownership of an inherited descriptor).
#![deny(unsafe_code)]

mod backoff;
mod cli;
mod client_loop;
mod credentials;
mod exec;
mod host_settings;
mod interface;
mod netns_helper;
mod ssh_client;
mod system_ssh;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    sshvpn_common::logging::init(cli.verbose);
    if let Command::NetnsHelper {
        sock_fd,
        no_offload,
        command,
    } = &cli.command
    {
        // Before any thread exists: unshare needs a single-threaded process.
        let Err(e) = netns_helper::main(*sock_fd, !no_offload, command);
        eprintln!("sshvpn exec: {e:#}");
        return ExitCode::from(127);
    }
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
                Command::Connect(args) => client_loop::run(args).await.map(|()| ExitCode::SUCCESS),
                Command::Exec(args) => exec::run(args).await,
                Command::NetnsHelper { .. } => unreachable!("handled before the runtime starts"),
            }
        });
        work.await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("internal error: {e}")))
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sshvpn: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
