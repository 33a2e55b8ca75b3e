//! `sshvpn`: the sshvpn client.

mod cli;
mod ssh_client;
mod tunnel_up;

use std::process::ExitCode;

use clap::Parser;
use sshvpn_common::tunnel::{ChannelRx, ChannelTx};

use crate::cli::{Cli, Command, ConnectArgs};
use crate::tunnel_up::{Outcome, TunnelOptions};

async fn connect(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    args.user_and_host().map_err(anyhow::Error::msg)?;
    let tun = tunnel_up::create_tun(&args.tun_name, !args.no_offload)?;
    let connected = ssh_client::connect(&args).await?;
    let server_addr = Some(connected.server_addr);
    let (rx, tx) = connected.channel.split();
    let opts = TunnelOptions {
        mtu: args.mtu,
        extra_routes: args.routes.clone(),
        server_addr,
    };
    let outcome = tunnel_up::run(tun, ChannelRx(rx), ChannelTx(tx), opts).await?;
    drop(connected.handle);
    match outcome {
        Outcome::Interrupted => Ok(ExitCode::SUCCESS),
        Outcome::Ended(e) => {
            eprintln!("sshvpn: tunnel ended: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sshvpn_common::logging::init(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
                Command::Connect(args) => connect(args).await,
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
