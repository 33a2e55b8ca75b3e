//! The state every connection shares, one part per concern, each part owned by the module that
//! defines its type: what sessions get ([`SessionPolicy`]) and how many run ([`SessionSlots`]),
//! who may connect ([`Access`]), the counters ([`Metrics`]), the switch, addressing and peer
//! routes, and the access-control policy and audit log. Built once by `daemon`; this file only
//! composes (it imports leaf types, never a module that takes the state).
//!
//! Pre-authentication admission (limits, penalties, login deadline) is not here: it belongs to the
//! SSH listener alone.

use std::sync::Arc;

use sshvpn_common::tun::TunDevice;

use crate::access::Access;
use crate::addressing::Addressing;
use crate::audit::Audit;
use crate::limits::LogEvery;
use crate::metrics::Metrics;
use crate::policy_runtime::PolicyRuntime;
use crate::routes::PeerRoutes;
use crate::session_policy::{SessionPolicy, SessionSlots};
use crate::switch::Switch;

/// State shared by every connection.
pub struct ServerState {
    pub session: SessionPolicy,
    pub slots: SessionSlots,
    pub access: Access,
    pub metrics: Metrics,
    pub tun: Arc<TunDevice>,
    pub switch: Arc<Switch>,
    pub addressing: Addressing,
    /// Kernel routes for connected peers' subnets.
    pub peer_routes: PeerRoutes,
    /// Rate limit of the "limit hit" warnings (shared by the listener, handler and control socket).
    pub limit_log: LogEvery,
    /// Access control (issue 14): the policy in force and its firewall table.
    pub policy: PolicyRuntime,
    /// The audit log (disabled without --audit-log / audit_log).
    pub audit: Audit,
}
