//! `sshvpnd`: the sshvpn server.

#![forbid(unsafe_code)]

mod addressing;
mod cli;
mod client_session;
mod daemon;
mod handler;
mod leases;
mod limits;
mod listener;
mod privileges;
mod switch;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Args::parse();
    sshvpn_common::logging::init(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sshvpnd: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sshvpnd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
