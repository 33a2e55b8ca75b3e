//! The tokio runtime both binaries run on.

/// Builds the runtime. `SSHVPN_RUNTIME` (experiment knob): `current` for a single-threaded
/// runtime, `multi:N` for N worker threads; default: one worker per CPU.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    let knob = std::env::var("SSHVPN_RUNTIME").unwrap_or_default();
    if knob == "current" {
        return tokio::runtime::Builder::new_current_thread().enable_all().build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = knob.strip_prefix("multi:").and_then(|n| n.parse().ok()) {
        b.worker_threads(n);
    }
    if let Some(n) = std::env::var("SSHVPN_EVENT_INTERVAL").ok().and_then(|n| n.parse().ok()) {
        b.event_interval(n);
    }
    b.enable_all().build()
}
