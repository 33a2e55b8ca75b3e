//! Byte-stream transports the tunnel runs over. Each is a thin adapter with two halves:
//! a russh channel, any `AsyncRead`/`AsyncWrite` pair (a child `ssh`'s stdio, a Unix socket).

use std::future::Future;
use std::io;

use bytes::{Bytes, BytesMut};
use russh::{ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Receiving half: appends whatever arrived to `buf`. `Ok(0)` means end of stream.
pub trait TransportRx: Send + 'static {
    fn recv(&mut self, buf: &mut BytesMut) -> impl Future<Output = io::Result<usize>> + Send;
}

/// Sending half: sends one batch of whole frames.
pub trait TransportTx: Send + 'static {
    fn send(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Signals the end of the stream (EOF), best effort.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
}

/// Minimum spare room offered to a read.
const READ_CHUNK: usize = 64 * 1024;

pub struct StreamRx<R>(pub R);
pub struct StreamTx<W>(pub W);

impl<R: AsyncRead + Unpin + Send + 'static> TransportRx for StreamRx<R> {
    async fn recv(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        buf.reserve(READ_CHUNK);
        self.0.read_buf(buf).await
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> TransportTx for StreamTx<W> {
    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        self.0.write_all(&data).await?;
        self.0.flush().await
    }
    async fn finish(&mut self) {
        let _ = self.0.shutdown().await;
    }
}

/// Receiving half of a russh channel (client or server side).
pub struct ChannelRx(pub ChannelReadHalf);

/// Sending half of a russh channel; batches go out without another copy.
pub struct ChannelTx<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static>(pub ChannelWriteHalf<S>);

impl TransportRx for ChannelRx {
    async fn recv(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        loop {
            match self.0.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    if data.is_empty() {
                        continue;
                    }
                    let n = data.len();
                    if buf.is_empty() {
                        // Nothing left over: take russh's buffer as is (no copy), and let go of
                        // ours, so that an idle session keeps no receive buffer at all.
                        match data.try_into_mut() {
                            Ok(owned) => *buf = owned,
                            Err(shared) => {
                                *buf = BytesMut::new();
                                buf.extend_from_slice(&shared);
                            }
                        }
                    } else {
                        buf.extend_from_slice(&data);
                    }
                    return Ok(n);
                }
                Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => return Ok(0),
                // Extended data (stderr), window adjustments, exit status: not tunnel bytes.
                Some(_) => continue,
            }
        }
    }
}

impl<S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static> TransportTx for ChannelTx<S> {
    async fn send(&mut self, data: Bytes) -> io::Result<()> {
        self.0
            .data_bytes(data)
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))
    }
    async fn finish(&mut self) {
        let _ = self.0.eof().await;
    }
}
