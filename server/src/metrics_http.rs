//! Prometheus metrics served on an opt-in address (`--metrics 127.0.0.1:9810`): a minimal HTTP/1.1
//! responder for the OpenMetrics text exposition, whatever path is asked for. (No small
//! well-kept crate serves one response better than these lines.)

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::listeners::{AcceptLoop, ConnectionSlots};

use crate::state::ServerState;

/// The server's metrics plus the access-control counters (read from the firewall first), in the
/// OpenMetrics text format.
pub async fn render_all(state: &ServerState) -> String {
    state.policy.refresh_counters().await;
    let policy = state.policy.firewall.policy().await;
    let mut registry = Registry::default();
    state
        .metrics
        .register(state.slots.connected(), &state.switch, &mut registry);
    state.policy.register_metrics(&policy, &mut registry);
    let mut o = String::new();
    // Writing to a String does not fail.
    let _ = prometheus_client::encoding::text::encode(&mut o, &registry);
    o
}

/// Scrapes served at once; more are closed as soon as they are accepted.
const MAX_CONNECTIONS: usize = 16;
/// Time a scraper has to send its request head.
const READ_DEADLINE: Duration = Duration::from_secs(2);
/// Time a whole exchange may take (rendering included).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Serves the metrics until the daemon stops. No error of this listener ends the daemon: failed
/// `accept`s are retried with backoff, at most [`MAX_CONNECTIONS`] are served at once, and each
/// has a deadline.
pub async fn serve(state: Arc<ServerState>, listener: TcpListener) -> anyhow::Result<()> {
    let slots = ConnectionSlots::new(MAX_CONNECTIONS);
    let mut accept = AcceptLoop::new("metrics listener");
    loop {
        let Some((s, _)) = accept.next(listener.accept().await, &state.limit_log).await else {
            continue;
        };
        let Some(slot) = slots.take() else {
            if let Some(n) = state.limit_log.check(std::time::Instant::now()) {
                tracing::warn!(
                    "metrics listener: {MAX_CONNECTIONS} scrapes in progress; closing new connections \
                     ({n} more limit hits since last report)"
                );
            }
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, answer(&state, s)).await;
        });
    }
}

/// Reads the request head (bounded, with a deadline), then answers with the metrics.
async fn answer(state: &ServerState, mut s: TcpStream) {
    let mut buf = [0u8; 2048];
    let _ = tokio::time::timeout(READ_DEADLINE, s.read(&mut buf)).await;
    let body = render_all(state).await;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(body.as_bytes()).await;
    let _ = s.shutdown().await;
}
