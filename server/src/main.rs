//! `sshvpnd`: the sshvpn server.

#![forbid(unsafe_code)]

mod access;
mod addressing;
mod audit;
mod check_config;
mod cli;
mod client_session;
mod config;
mod control;
mod credentials;
mod daemon;
mod firewall;
mod firewall_runner;
mod host_key;
mod leases;
mod limits;
mod listeners;
mod log_escape;
mod memory_release;
mod metrics;
mod metrics_http;
mod policy;
mod policy_runtime;
mod privileges;
mod routes;
mod safe_fs;
mod session_policy;
mod ssh;
mod state;
mod strict_modes;
mod switch;

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Before anything allocates: buffers freed on the data path are reused, not re-faulted.
    sshvpn_common::memory::tune_allocator();
    let cli = cli::Cli::parse();
    if let Some(cli::Command::Attach { control }) = &cli.command {
        // Run by sshd: stdout is the tunnel, errors go to stderr (which ssh shows the user).
        return match control::attach::run(control) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sshvpnd attach: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match &cli.command {
        Some(cli::Command::Completions { shell }) => {
            return sshvpn_common::cli_docs::print_completions(
                <cli::Cli as clap::CommandFactory>::command(),
                *shell,
                "sshvpnd",
            );
        }
        Some(cli::Command::Man) => {
            return sshvpn_common::cli_docs::print_man(<cli::Cli as clap::CommandFactory>::command());
        }
        _ => {}
    }
    if let Some(cli::Command::Status { control, json }) = &cli.command {
        return match control::status::query(control, *json) {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sshvpnd status: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(cli::Command::Policy { control, json }) = &cli.command {
        return match control::policy::query(control, *json) {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sshvpnd policy: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(cli::Command::CheckConfig { config }) = &cli.command {
        return match check_config::check_config(config) {
            Ok(summary) => {
                println!("{summary}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let args = cli.serve;
    sshvpn_common::logging::init(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
