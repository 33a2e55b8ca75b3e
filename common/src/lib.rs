//! Shared code of sshvpn: the wire protocol (sans-IO), packet handling, the tunnel driver,
//! TUN devices, OS network setup, and SSH key / known_hosts helpers.

#![deny(unsafe_code)]

pub mod accept_policy;
pub mod allowed_ips;
pub mod authorized_keys;
pub mod cli_args;
pub mod cli_docs;
pub mod escape;
pub mod keys;
pub mod known_hosts;
pub mod krl;
pub mod logging;
pub mod memory;
pub mod netconf;
pub mod packet;
pub mod pool;
pub mod proto;
pub mod report;
pub mod sd_notify;
pub mod ssh;
pub mod toml_errors;
pub mod tun;
pub mod tunnel;
