use std::convert::Infallible;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Front;
use crate::head_timer::ConnectionTimer;

/// What one client may hold of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may wait idle for its next request.
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 4096,
        }
    }
}

/// How often a failing `accept` is logged at most.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Serve `front` on `listener` until `shutdown` turns true; then stop accepting and wait up to
/// `drain` for in-flight requests.
pub async fn serve(
    front: Arc<Front>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    limits: ServerLimits,
) {
    let draining = Arc::new(Draining::default());
    let max_connections = limits.max_connections.max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut accept_failures: (Option<std::time::Instant>, u64) = (None, 0);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .header_read_timeout(limits.header_read_timeout);
    // Without half-close, hyper probes the socket for EOF while each request is in flight,
    // which makes it allocate a fresh read buffer per request (the old one is still shared
    // with the request's head). A client that hangs up is still noticed when we write.
    builder.http1().half_close(true);
    loop {
        // At the connection cap, further clients wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Out of file descriptors and the like: pause instead of spinning, and
                        // say so once per interval, not once per attempt.
                        accept_failures.1 += 1;
                        if accept_failures.0.is_none_or(|at| at.elapsed() >= ACCEPT_LOG_INTERVAL) {
                            tracing::warn!(error = %err, failures = accept_failures.1, "accept failed");
                            accept_failures = (Some(std::time::Instant::now()), 0);
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let front = front.clone();
                let service = service_fn(move |request| {
                    let front = front.clone();
                    async move { Ok::<_, Infallible>(front.handle_with_body(request).await) }
                });
                let first_byte_wait = limits.header_read_timeout;
                let mut builder = builder.clone();
                builder.http1().timer(ConnectionTimer::new());
                let draining = draining.clone();
                tokio::spawn(async move {
                    // hyper's header timeout starts at the first byte; a client that connects
                    // and says nothing is given the same time, then dropped.
                    let mut first = [0u8; 1];
                    if tokio::time::timeout(first_byte_wait, stream.peek(&mut first)).await.is_err() {
                        tracing::debug!("closed a connection that sent nothing");
                        return;
                    }
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(err) = draining.watch(connection, |c| c.graceful_shutdown()).await {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    drop(slot);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    draining.begin();
    // Every connection holds a slot until it ends.
    let all_closed = slots.acquire_many(u32::try_from(max_connections).unwrap_or(u32::MAX));
    tokio::select! {
        _ = all_closed => tracing::info!("all connections finished"),
        () = tokio::time::sleep(drain) => tracing::warn!("stopped waiting for open connections"),
    }
}

/// Tells open connections to finish their request in progress and close.
///
/// hyper-util's graceful watcher polls a shutdown notification, which takes a lock, every
/// time a connection's task wakes (0.4 % of a redirect hit on one core). Here a connection
/// registers for the notification once and then reads a flag.
#[derive(Default)]
struct Draining {
    started: AtomicBool,
    notify: tokio::sync::Notify,
}

impl Draining {
    fn begin(&self) {
        self.started.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Run `connection`, calling `graceful_shutdown` on it once draining begins.
    async fn watch<C: Future>(
        &self,
        connection: C,
        mut graceful_shutdown: impl FnMut(Pin<&mut C>),
    ) -> C::Output {
        let mut connection = pin!(connection);
        let mut notified = pin!(self.notify.notified());
        let mut registered = false;
        let mut told = false;
        std::future::poll_fn(|cx| {
            if !registered {
                // Registered with this task's waker, which stays the same: a spawned task's.
                registered = true;
                let _ = notified.as_mut().poll(cx);
            }
            if !told && self.started.load(Ordering::Acquire) {
                told = true;
                graceful_shutdown(connection.as_mut());
            }
            connection.as_mut().poll(cx)
        })
        .await
    }
}
