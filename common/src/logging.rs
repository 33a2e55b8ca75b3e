//! Logging setup shared by both binaries: `-v` raises the level, `RUST_LOG` overrides it.

use tracing_subscriber::EnvFilter;

/// Initialises tracing to stderr. `verbosity` 0 = info, 1 = debug, 2+ = trace.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},russh=warn,netlink_proto=warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
