//! A byte-for-byte TCP forwarder on 127.0.0.1.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards every connection on its own port to `target`, unchanged. Can be taken down (an
/// outage: open connections are cut, new ones closed at once) and brought back. Stops when
/// dropped.
pub struct TcpForwarder {
    addr: SocketAddr,
    task: JoinHandle<()>,
    down: tokio::sync::watch::Sender<bool>,
}

impl TcpForwarder {
    /// Listen on a free 127.0.0.1 port and forward to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (down, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch = watch.clone();
                if *watch.borrow() {
                    continue; // down: the connection is closed at once
                }
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = watch.wait_for(|down| *down) => {}
                        }
                    }
                });
            }
        });
        Self { addr, task, down }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Take the target down (`true`) or bring it back (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

impl Drop for TcpForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
