//! A TCP proxy on loopback standing in for a database endpoint whose name a
//! failover points elsewhere (RDS Multi-AZ moves its DNS record): new
//! connections go to the current upstream; switching cuts every connection
//! to the old one, as the old primary's death does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// The loopback port clients connect to.
    pub port: u16,
    upstream: Arc<AtomicU16>,
    cut: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(AtomicU16::new(upstream));
        let (cut, cuts) = watch::channel(0);
        let target = upstream.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let port = target.load(Ordering::SeqCst);
                tokio::spawn(relay(client, port, cuts.clone()));
            }
        });
        Self {
            port,
            upstream,
            cut,
            task,
        }
    }

    /// Sends new connections to `127.0.0.1:upstream` and cuts every
    /// connection open now.
    pub fn switch(&self, upstream: u16) {
        self.upstream.store(upstream, Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut.send_modify(|generation| *generation += 1);
    }
}

/// Copies both ways until either side closes or the proxy cuts.
async fn relay(mut client: TcpStream, port: u16, mut cuts: watch::Receiver<u64>) {
    cuts.mark_unchanged();
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    tokio::select! {
        _ = copy_bidirectional(&mut client, &mut server) => {}
        _ = cuts.changed() => {}
    }
}
