//! Admission of connections: each listener holds at most its cap of connections at once.
//! At the cap it stops accepting until one closes (the kernel's backlog queues the next
//! clients, as HAProxy's `maxconn` does), rather than accepting and dropping them. The open
//! connections of each listener are a gauge (`gateway_open_connections`), and the times a
//! listener reached its cap a counter (`gateway_connection_cap_reached_total`).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The connection cap of one listener (cheap to clone: clones share the cap).
#[derive(Clone, Debug)]
pub struct ConnectionCap {
    permits: Arc<Semaphore>,
    listener: &'static str,
}

impl ConnectionCap {
    /// At most `max` connections (at least one) for the listener named `listener` in metrics.
    pub fn new(listener: &'static str, max: usize) -> ConnectionCap {
        ConnectionCap {
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            listener,
        }
    }

    /// Waits for room for one more connection.
    pub async fn admit(&self) -> Admitted {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter!("gateway_connection_cap_reached_total", "listener" => self.listener)
                    .increment(1);
                tracing::debug!(
                    listener = self.listener,
                    "connection cap reached, accepting paused"
                );
                match Arc::clone(&self.permits).acquire_owned().await {
                    Ok(permit) => permit,
                    // the semaphore is never closed; a closed one would admit without bound
                    Err(_) => return std::future::pending().await,
                }
            }
        };
        metrics::gauge!("gateway_open_connections", "listener" => self.listener).increment(1.0);
        Admitted {
            _permit: permit,
            listener: self.listener,
        }
    }

    /// Connections that could still be admitted now.
    pub fn room(&self) -> usize {
        self.permits.available_permits()
    }
}

/// One admitted connection's place under the cap, given back when dropped.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        metrics::gauge!("gateway_open_connections", "listener" => self.listener).decrement(1.0);
    }
}

/// A connection holding its place under its listener's cap for as long as it lives.
#[derive(Debug)]
pub struct Capped<I> {
    io: I,
    _admitted: Admitted,
}

impl<I> Capped<I> {
    pub fn new(io: I, admitted: Admitted) -> Capped<I> {
        Capped {
            io,
            _admitted: admitted,
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }

    /// The connection and its place, apart.
    pub fn into_parts(self) -> (I, Admitted) {
        (self.io, self._admitted)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Capped<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Capped<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<I: tonic::transport::server::Connected> tonic::transport::server::Connected for Capped<I> {
    type ConnectInfo = I::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepts on `listener` under `cap`: each connection waits for room before it is
/// accepted. A failed accept (out of descriptors and the like) is retried after a pause
/// instead of spinning.
pub async fn accept(
    listener: &tokio::net::TcpListener,
    cap: &ConnectionCap,
) -> (Capped<tokio::net::TcpStream>, std::net::SocketAddr) {
    let admitted = cap.admit().await;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // answers are written whole: nothing is gained by delaying them
                let _ = stream.set_nodelay(true);
                return (Capped::new(stream, admitted), peer);
            }
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_listener_at_its_cap_accepts_again_when_a_connection_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cap = ConnectionCap::new("test", 2);
        // an echo server of one byte per connection, under the cap
        let server_cap = cap.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = accept(&listener, &server_cap).await;
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    while let Ok(1) = stream.read(&mut byte).await {
                        if stream.write_all(&byte).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let mut open = Vec::new();
        for byte in [b'a', b'b'] {
            let mut client = tokio::net::TcpStream::connect(address).await.unwrap();
            client.write_all(&[byte]).await.unwrap();
            let mut echo = [0u8; 1];
            client.read_exact(&mut echo).await.unwrap();
            assert_eq!(echo[0], byte);
            open.push(client);
        }
        assert_eq!(cap.room(), 0);
        // the third connects (the kernel queues it) but is not served while two are open
        let mut third = tokio::net::TcpStream::connect(address).await.unwrap();
        third.write_all(b"c").await.unwrap();
        let mut echo = [0u8; 1];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            third.read_exact(&mut echo),
        )
        .await;
        assert!(early.is_err(), "served past the cap");
        // one closes: the third is accepted and served
        drop(open.remove(0));
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            third.read_exact(&mut echo),
        )
        .await
        .expect("served once a place was free")
        .unwrap();
        assert_eq!(echo[0], b'c');
        assert_eq!(cap.room(), 0);
        drop(third);
        drop(open);
        // every place comes back once the connections are gone
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while cap.room() < 1 && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(cap.room() >= 1);
    }
}
