//! One ZooKeeper session at a time, kept alive for the life of the process.
//!
//! Invariants:
//! - A session that expired is never resurrected: every lock and claim it held is gone
//!   with it. Subscribers get [`SessionEvent::Expired`] first, and only then is a new
//!   session opened and [`SessionEvent::Established`] sent with a higher generation.
//! - `client()` hands out the current session's client or an error that says why there
//!   is none; callers never block waiting for a reconnect.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::tls::{self, ZkTls};

/// How to reach ZooKeeper.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Connect string: `host:port,host:port[/chroot]`.
    pub connect: String,
    pub session_timeout: Duration,
    /// Digest credentials `user:password`, added to the session before first use.
    pub digest_auth: Option<String>,
    /// TLS to every server (its certificates read again for rotations), or plain text.
    pub tls: Option<ZkTls>,
}

/// What happened to the session; `generation` counts sessions opened by this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Established {
        generation: u64,
        session_id: i64,
    },
    /// Connection to the ensemble lost; the session may still be alive on the server.
    Suspended {
        generation: u64,
    },
    /// Connection back within the session timeout: ephemerals and watches are intact.
    Reconnected {
        generation: u64,
    },
    /// The session is gone and with it every ephemeral node it owned.
    Expired {
        generation: u64,
        session_id: i64,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("no ZooKeeper session: {0}")]
    NotConnected(String),
}

/// The current session, as handed to callers.
#[derive(Debug, Clone)]
pub struct Current {
    pub client: zk::Client,
    pub generation: u64,
}

/// Keeps one session open; cheap to clone.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: SessionOptions,
    current: watch::Sender<Option<Current>>,
    connected: watch::Sender<bool>,
    events: broadcast::Sender<SessionEvent>,
    last_error: std::sync::Mutex<String>,
    shutdown: CancellationToken,
}

impl Session {
    /// Starts keeping a session; the first connect happens in the background, so a
    /// process can serve `/healthz` while ZooKeeper is still unreachable.
    pub fn start(options: SessionOptions) -> Self {
        let (current, _) = watch::channel(None);
        let (connected, _) = watch::channel(false);
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            options,
            current,
            connected,
            events,
            last_error: std::sync::Mutex::new("connecting".to_owned()),
            shutdown: CancellationToken::new(),
        });
        if let Some(tls) = &inner.options.tls {
            tokio::spawn(tls.clone().follow_files(tls::RELOAD_INTERVAL, inner.shutdown.clone()));
        }
        tokio::spawn(keep_session(inner.clone()));
        Self { inner }
    }

    /// The current session's client.
    pub fn client(&self) -> Result<Current, SessionError> {
        self.inner
            .current
            .borrow()
            .clone()
            .ok_or_else(|| SessionError::NotConnected(self.inner.last_error.lock().expect("not poisoned").clone()))
    }

    /// Waits until a session is established (or `timeout`).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<Current, SessionError> {
        let mut rx = self.inner.connected.subscribe();
        let wait = rx.wait_for(|c| *c);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => self.client(),
            _ => Err(SessionError::NotConnected(self.inner.last_error.lock().expect("not poisoned").clone())),
        }
    }

    /// Whether the session is connected to a server right now.
    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<SessionEvent> {
        self.inner.events.subscribe()
    }

    pub fn session_timeout(&self) -> Duration {
        self.inner.options.session_timeout
    }

    /// Closes the session: its ephemeral nodes are deleted at once by the server, also
    /// while other tasks still hold clones of its client (their requests then fail with
    /// `ClientClosed`). Waits up to a few seconds for the server to confirm.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        let current = self.inner.current.send_replace(None);
        self.inner.connected.send_replace(false);
        let Some(current) = current else { return };
        let mut states = current.client.state_watcher();
        current.client.close();
        let closed = async {
            let mut state = states.state();
            while !state.is_terminated() {
                state = states.changed().await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), closed).await {
            Ok(()) => tracing::info!(generation = current.generation, "ZooKeeper session closed"),
            Err(_) => tracing::warn!(
                generation = current.generation,
                "ZooKeeper did not confirm the close in 5 s; the session ends at its timeout"
            ),
        }
    }
}

/// Connects until a session is open (None: shut down meanwhile), retrying with a backoff
/// and keeping in `last_error` why the last attempt failed.
async fn open_session(inner: &Inner) -> Option<zk::Client> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut connector = zk::Client::connector().with_session_timeout(inner.options.session_timeout);
        if let Some(auth) = &inner.options.digest_auth {
            connector = connector.with_auth("digest", auth.as_bytes());
        }
        let connector = connector.with_fail_eagerly();
        let connect = &inner.options.connect;
        let client = tokio::select! {
            result = async {
                match &inner.options.tls {
                    Some(tls) => connector.with_tls(tls.options()).secure_connect(connect).await,
                    None => connector.connect(connect).await,
                }
            } => result,
            _ = inner.shutdown.cancelled() => return None,
        };
        let err = match client {
            Ok(client) => return Some(client),
            Err(err) => err,
        };
        let mut message = format!("cannot connect to ZooKeeper at {connect}: {err}");
        if let Some(why) = tls::diagnose(inner.options.tls.as_ref(), connect).await {
            message = format!("{message}; {why}");
        }
        tracing::warn!(%connect, error = %message, retry_in = ?backoff, "ZooKeeper connect failed");
        *inner.last_error.lock().expect("not poisoned") = message;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = inner.shutdown.cancelled() => return None,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn keep_session(inner: Arc<Inner>) {
    let mut generation = 0u64;
    loop {
        if inner.shutdown.is_cancelled() {
            return;
        }
        let Some(client) = open_session(&inner).await else { return };
        generation += 1;
        let session_id = client.session_id().0;
        tracing::info!(generation, session_id = format_args!("{session_id:#x}"), "ZooKeeper session established");
        let mut states = client.state_watcher();
        inner.current.send_replace(Some(Current { client: client.clone(), generation }));
        inner.connected.send_replace(true);
        let _ = inner.events.send(SessionEvent::Established { generation, session_id });
        drop(client);

        loop {
            let state = tokio::select! {
                state = states.changed() => state,
                _ = inner.shutdown.cancelled() => return,
            };
            match state {
                zk::SessionState::Disconnected => {
                    tracing::warn!(generation, "ZooKeeper connection lost; session suspended");
                    *inner.last_error.lock().expect("not poisoned") =
                        "connection to ZooKeeper lost; reconnecting within the session timeout".to_owned();
                    inner.connected.send_replace(false);
                    let _ = inner.events.send(SessionEvent::Suspended { generation });
                }
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    tracing::info!(generation, "ZooKeeper connection back; session intact");
                    inner.connected.send_replace(true);
                    let _ = inner.events.send(SessionEvent::Reconnected { generation });
                }
                terminal => {
                    // Handled here (a new session follows, holders are told of lost locks):
                    // a warning, not an error a person must act on.
                    tracing::warn!(generation, state = %terminal, "ZooKeeper session ended; opening a new one");
                    *inner.last_error.lock().expect("not poisoned") =
                        format!("ZooKeeper session {terminal}; opening a new one");
                    inner.current.send_replace(None);
                    inner.connected.send_replace(false);
                    let _ = inner.events.send(SessionEvent::Expired { generation, session_id });
                    break;
                }
            }
        }
    }
}
