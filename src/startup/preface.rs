//! A deadline on a gRPC connection's HTTP/2 preface. hyper waits for a
//! client's preface for as long as the client likes, so a slowloris (many
//! connections that send nothing, or a byte now and then) would hold sockets
//! and tasks for ever; a connection whose first 24 bytes have not arrived
//! within [`PREFACE_DEADLINE`] is closed. Once the preface is in, streams are
//! bounded by `grpc_max_concurrent_streams` and each call by the default
//! deadline.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a new connection has to send its preface: far more than any
/// real client needs, even across a continent.
pub const PREFACE_DEADLINE: Duration = Duration::from_secs(10);
/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const PREFACE_LEN: usize = 24;

/// A TCP connection that fails its reads once the preface is late.
pub struct PrefaceDeadline {
    inner: TcpStream,
    /// Bytes read so far, until the preface is complete.
    read: usize,
    /// `None` once the preface arrived.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl PrefaceDeadline {
    pub fn new(inner: TcpStream) -> Self {
        PrefaceDeadline {
            inner,
            read: 0,
            deadline: Some(Box::pin(tokio::time::sleep(PREFACE_DEADLINE))),
        }
    }
}

impl Connected for PrefaceDeadline {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for PrefaceDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = &mut this.deadline {
            if let Poll::Ready(Ok(())) = polled {
                this.read += buf.filled().len() - before;
                if this.read >= PREFACE_LEN {
                    this.deadline = None;
                    return polled;
                }
            }
            // Polled on every read, so the timer wakes the connection up.
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within the deadline",
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for PrefaceDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair() -> (PrefaceDeadline, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (PrefaceDeadline::new(server), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_its_preface_fails_at_the_deadline() {
        let (mut server, mut client) = pair().await;
        client.write_all(b"PRI * HTTP/2.0").await.unwrap();
        let mut buf = [0u8; 64];
        let mut read = 0;
        let started = tokio::time::Instant::now();
        let error = loop {
            match server.read(&mut buf).await {
                Ok(n) => read += n,
                Err(e) => break e,
            }
        };
        assert_eq!(read, 14, "what came is read");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), PREFACE_DEADLINE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_its_preface_has_no_deadline_after_it() {
        let (mut server, mut client) = pair().await;
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let mut read = 0;
        while read < PREFACE_LEN {
            read += server.read(&mut buf).await.unwrap();
        }
        tokio::time::advance(PREFACE_DEADLINE * 2).await;
        client.write_all(b"later").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 5);
    }
}
