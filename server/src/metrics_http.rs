//! Prometheus metrics served on an opt-in address (`--metrics 127.0.0.1:9810`): a minimal HTTP/1.1
//! responder for the OpenMetrics text exposition, whatever path is asked for. (No small
//! well-kept crate serves one response better than these lines.)

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

pub async fn serve(state: Arc<ServerState>, listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (mut s, _) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            // Read the request head (bounded), then answer.
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut buf)).await;
            let body = render_all(&state).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
