//! A TCP proxy on loopback in front of the service that cuts its first connection once a
//! number of bytes have gone from the service to the client, as a dropped link would; later
//! connections pass whole. For downloads that must survive a cut.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct CutProxy {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CutProxy {
    /// Proxies to `upstream`; the first connection is closed (both ways) after `cut_after`
    /// bytes from upstream.
    pub async fn start(upstream: SocketAddr, cut_after: usize) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
                let limit = first.then_some(cut_after);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pipe(client, server, limit).await;
                    }
                });
            }
        });
        CutProxy {
            addr,
            connections,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Copies both ways until either side closes, or until `limit` bytes came from the server.
async fn pipe(client: TcpStream, server: TcpStream, limit: Option<usize>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    };
    let downstream = async {
        let mut buffer = vec![0u8; 16 << 10];
        let mut sent = 0usize;
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let n = match limit {
                Some(limit) => n.min(limit - sent),
                None => n,
            };
            if client_write.write_all(&buffer[..n]).await.is_err() {
                return;
            }
            sent += n;
            if limit == Some(sent) {
                return;
            }
        }
    };
    // Whichever way ends first, both halves are dropped: the connection is gone.
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
