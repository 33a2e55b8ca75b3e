//! Dropping root after setup (`--user`): switch to an unprivileged user, keeping only
//! CAP_NET_ADMIN (needed to add and remove routes while clients come and go). The TUN and the
//! listening sockets are already open and need no privilege to use. CAP_NET_ADMIN is also put
//! in the inheritable and ambient sets, so that the `nft` children keeping the access-control
//! sets in step with the sessions (and removing the tables at exit) have it too; no other
//! capability is inheritable. The packaged unit starts the daemon as its user already
//! (`User=sshvpn`, `AmbientCapabilities=`), without `--user`: see docs/security.md, "Privileges".

use anyhow::{Context, anyhow};
use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User, setgid, setgroups, setuid};

/// Becomes `user` with CAP_NET_ADMIN as the only capability (effective, permitted, bounding).
pub fn drop_to(user: &str) -> anyhow::Result<()> {
    let entry = User::from_name(user)
        .with_context(|| format!("looking up user {user}"))?
        .ok_or_else(|| anyhow!("no such user: {user}"))?;
    let keep: CapsHashSet = [Capability::CAP_NET_ADMIN].into_iter().collect();
    let me = nix::unistd::geteuid();
    if !me.is_root() {
        if me.as_raw() == entry.uid.as_raw() {
            tracing::info!("already running as {user} (uid {me}); nothing to drop");
            return Ok(());
        }
        anyhow::bail!("--user {user}: the daemon runs as uid {me}, not root, and cannot become {user}");
    }
    // Keep permitted capabilities across setuid, then trim everything else.
    nix::sys::prctl::set_keepcaps(true).context("PR_SET_KEEPCAPS")?;
    for cap in caps::all() {
        if cap != Capability::CAP_NET_ADMIN {
            caps::drop(None, CapSet::Bounding, cap).context("dropping bounding capabilities")?;
        }
    }
    setgroups(&[]).context("clearing supplementary groups")?;
    setgid(Gid::from_raw(entry.gid.as_raw())).context("setgid")?;
    setuid(Uid::from_raw(entry.uid.as_raw())).context("setuid")?;
    caps::set(None, CapSet::Permitted, &keep).context("setting permitted capabilities")?;
    caps::set(None, CapSet::Effective, &keep).context("setting effective capabilities")?;
    // Access control (issue 14): `nft` children keep CAP_NET_ADMIN (and nothing else).
    caps::set(None, CapSet::Inheritable, &keep).context("setting inheritable capabilities")?;
    caps::set(None, CapSet::Ambient, &keep).context("setting ambient capabilities")?;
    nix::sys::prctl::set_keepcaps(false).context("PR_SET_KEEPCAPS")?;
    // Capabilities are per thread: the nft runner is started again from this one.
    crate::firewall_runner::restart();
    tracing::info!("now running as {user} (uid {}) with CAP_NET_ADMIN only", entry.uid);
    Ok(())
}
