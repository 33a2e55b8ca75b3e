//! `sshvpn`: the sshvpn client.

// Only the namespace helper needs unsafe code (taking ownership of an inherited descriptor).
#![deny(unsafe_code)]

mod backoff;
mod cli;
mod connect;
mod exec;
mod interface;
mod netns_helper;
mod profile;
mod run_dir;
mod status;
mod transport;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    // Before anything allocates: buffers freed on the data path are reused, not re-faulted.
    sshvpn_common::memory::tune_allocator();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // `sshvpn connect PROFILE`: options from the profile file where the command line is silent.
    let sub = matches.subcommand().map(|(_, m)| m.clone());
    let cli_set = |id: &str| {
        sub.as_ref().is_some_and(|m| {
            m.try_get_raw(id).is_ok_and(|v| v.is_some())
                && m.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        })
    };
    let profile = match &mut cli.command {
        Command::Connect(args) => profile::apply(args, cli_set),
        Command::Exec(args) => profile::apply(&mut args.connect, cli_set),
        _ => Ok(None),
    };
    match profile {
        Ok(Some(path)) => eprintln!("sshvpn: using profile {}", path.display()),
        Ok(None) => {}
        Err(e) => {
            eprintln!("sshvpn: error: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    sshvpn_common::logging::init(cli.verbose);
    match &cli.command {
        Command::Status { tun_name, json } => {
            return match status::query(tun_name, *json) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sshvpn status: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Completions { shell } => {
            return sshvpn_common::cli_docs::print_completions(
                <Cli as clap::CommandFactory>::command(),
                *shell,
                "sshvpn",
            );
        }
        Command::Man => return sshvpn_common::cli_docs::print_man(<Cli as clap::CommandFactory>::command()),
        _ => {}
    }
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
                Command::Connect(args) => connect::run(args).await.map(|()| ExitCode::SUCCESS),
                Command::Exec(args) => exec::run(args).await,
                Command::NetnsHelper { .. } | Command::Completions { .. } | Command::Man | Command::Status { .. } => {
                    unreachable!("handled before the runtime starts")
                }
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
