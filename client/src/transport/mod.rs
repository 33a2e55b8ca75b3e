//! How the client reaches the server: the built-in SSH client (russh, with its credentials) or
//! the system `ssh`. Each transport hands back a byte stream for the tunnel driver; this module
//! owns connecting and authenticating, and must not know about the tunnel interface or sessions.

pub mod credentials;
pub mod ssh_client;
pub mod system_ssh;

use crate::cli::ConnectArgs;
use crate::transport::credentials::{Credentials, Target};

/// How the client reaches the server.
pub enum Transport {
    /// The built-in SSH client.
    Builtin { target: Target, creds: Credentials },
    /// The system `ssh`.
    SystemSsh,
}

impl Transport {
    /// The transport the arguments ask for (credentials are loaded once, here).
    pub fn from_args(args: &ConnectArgs) -> anyhow::Result<Transport> {
        Ok(if args.ssh || args.ssh_command.is_some() {
            Transport::SystemSsh
        } else {
            let target = credentials::resolve_target(args)?;
            let creds = credentials::load_credentials(args, &target)?;
            Transport::Builtin { target, creds }
        })
    }
}
