//! A fault proxy between ZooKeeper clients (a sidecar) and their ensemble that loses a
//! chosen reply on command: the request reaches the server and is applied (or refused),
//! the server's reply is discarded and both connections are closed. The client sees
//! `ConnectionLoss` for a write whose outcome it cannot know, reconnects through the proxy
//! within its session timeout, and finds its session (and its ephemerals) intact. So the
//! code paths that handle "applied, but the reply was lost" run on purpose, not by luck.
//!
//! ```text
//! client ──▶ 127.0.0.1:<free port> (FaultProxy) ──▶ one of the servers, in rotation
//! ```
//!
//! It reads ZooKeeper's client framing: every frame is a 4-byte big-endian length and
//! that many bytes. The client's first frame is its ConnectRequest and the server's first
//! the ConnectResponse, neither with a header; every later client frame starts with
//! `RequestHeader {xid: i32, type: i32}`, every later server frame with
//! `ReplyHeader {xid: i32, zxid: i64, err: i32}` (watch events have xid -1, pings -2).
//!
//! Invariants:
//! - Frames are forwarded whole and unchanged, in order; only the armed request's reply
//!   (and everything after it on that connection) is dropped.
//! - Once an armed request is forwarded, nothing more of that client's is sent until its
//!   reply is in: the server applies exactly that request, and later ones fail with the
//!   connection (not applied), as they would on a real cut.
//! - A rule fires once. By default it fires only on a reply that says the request was
//!   applied ([`Outcome::Applied`]); a refused one (e.g. a create under a missing bucket)
//!   is passed through and the rule stays armed.
//!
//! It can also cut its clients off the whole ensemble ([`FaultProxy::blackhole`]), as a
//! node's network going away does: nothing is forwarded either way, new connections are
//! accepted and held, and no connection is closed, so the client notices only by its own
//! timeouts and the servers only by the missing pings (the session expires). On
//! [`FaultProxy::heal`] every connection that lived through the cut is closed (what it
//! held is dropped, as a network drops packets) and clients connect afresh.
//!
//! In front of an ensemble that serves TLS only ([`FaultProxy::start_tls`], or
//! [`FaultProxy::for_ensemble`] on such an ensemble) it terminates TLS: its clients
//! connect to it over TLS (it serves a certificate of the test CA for 127.0.0.1 and
//! requires theirs), and it connects to each server over TLS with a client certificate
//! (the proxied client's own, see `EnsembleTls::proxy_tls`). Between the two it reads
//! the frames in the clear, so every rule works as over plain text.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

/// ZooKeeper opcodes (`ZooDefs.OpCode`). What zookeeper-client 0.11 sends for each call
/// (against a 3.5+ server): `create` → [`CREATE2`] (or [`CREATE_CONTAINER`] /
/// [`CREATE_TTL`] by mode), `delete` → [`DELETE`], `set_data` → [`SET_DATA`], a
/// `MultiWriter` → [`MULTI`] (its creates inside are [`CREATE2`]), a `MultiReader` →
/// [`MULTI_READ`]. [`CREATE`] is only sent to servers older than 3.5.
pub mod op {
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const EXISTS: i32 = 3;
    pub const GET_DATA: i32 = 4;
    pub const SET_DATA: i32 = 5;
    pub const GET_CHILDREN: i32 = 8;
    pub const SYNC: i32 = 9;
    pub const PING: i32 = 11;
    pub const GET_CHILDREN2: i32 = 12;
    pub const CHECK: i32 = 13;
    pub const MULTI: i32 = 14;
    pub const CREATE2: i32 = 15;
    pub const CREATE_CONTAINER: i32 = 19;
    pub const CREATE_TTL: i32 = 21;
    pub const MULTI_READ: i32 = 22;
    pub const AUTH: i32 = 100;
    pub const SET_WATCHES2: i32 = 105;
    pub const ADD_WATCH: i32 = 106;
    pub const CLOSE_SESSION: i32 = -11;
    /// Every way a client creates a node.
    pub const CREATES: &[i32] = &[CREATE, CREATE2, CREATE_CONTAINER, CREATE_TTL];
    /// The type of a failed operation's result inside a multi response.
    pub const ERROR: i32 = -1;
}

/// Which reply may be lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Only a reply that says the request was applied (err 0; for a multi, no failed
    /// operation). A refused request's reply is passed through and the rule stays armed.
    #[default]
    Applied,
    /// Only a reply that says the request was refused.
    Refused,
    /// Whatever the server answered.
    Any,
    /// The request never reaches the server: the connection is closed instead of
    /// forwarding it, so the write is certainly not applied (`Fired::applied` false).
    NotSent,
}

/// Which client request to lose the reply of.
#[derive(Debug, Clone, Copy, Default)]
pub struct Match<'a> {
    /// The request's opcode is one of these (see [`op`]).
    pub opcodes: &'a [i32],
    /// The request's body (after its header) contains this: paths are plain strings in
    /// it, so `"/claims/"` tells a claim or ack multi from an enqueue multi.
    pub body_contains: Option<&'a str>,
    pub outcome: Outcome,
    /// What the proxy does the moment the reply is lost: a lost reply followed by an
    /// outage, deterministically (no reconnect can slip in between).
    pub then: Then,
}

/// An outage that starts with a lost reply, until [`FaultProxy::heal`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Then {
    /// Nothing: the client reconnects at once.
    #[default]
    Nothing,
    /// [`FaultProxy::blackhole`]: connections hang, requests wait.
    Blackhole,
    /// [`FaultProxy::refuse`]: every new connection is closed at once (servers that are
    /// down), so the client's requests fail fast with connection loss.
    Refuse,
}

/// A reply the proxy lost: the request, and the header of the server's reply to it.
#[derive(Debug, Clone)]
pub struct Fired {
    pub opcode: i32,
    pub xid: i32,
    /// The zxid in the server's reply (the transaction's, when applied).
    pub zxid: i64,
    pub err: i32,
    /// Whether the server applied the request (see [`Outcome::Applied`]).
    pub applied: bool,
    /// The request's body, after its header.
    pub body: Vec<u8>,
}

impl Fired {
    /// The operations of the request and their paths: one for a plain request, one per
    /// operation for a multi.
    pub fn operations(&self) -> Vec<(i32, String)> {
        request_operations(self.opcode, &self.body).unwrap_or_default()
    }
}

/// An armed rule; resolves once the proxy has lost the reply.
#[derive(Debug)]
pub struct LostReply {
    rx: oneshot::Receiver<Fired>,
    fired: Option<Fired>,
}

impl LostReply {
    /// The lost reply, if the rule has fired by now.
    pub fn fired(&mut self) -> Option<&Fired> {
        if self.fired.is_none() {
            self.fired = self.rx.try_recv().ok();
        }
        self.fired.as_ref()
    }

    /// Waits until the rule has fired.
    pub async fn wait(mut self, timeout: Duration) -> Result<Fired> {
        if let Some(fired) = self.fired.take() {
            return Ok(fired);
        }
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(fired)) => Ok(fired),
            Ok(Err(_)) => bail!("the fault proxy stopped before the rule fired"),
            Err(_) => bail!("no matching request within {timeout:?}"),
        }
    }
}

/// A reply the proxy holds back (see [`FaultProxy::hold_next_reply`]); dropping this
/// releases it.
#[derive(Debug)]
pub struct HeldReply {
    reply: LostReply,
    release: Option<oneshot::Sender<()>>,
}

impl HeldReply {
    /// Waits until the reply is in the proxy, held.
    pub async fn wait(&mut self, timeout: Duration) -> Result<Fired> {
        if let Some(fired) = self.reply.fired() {
            return Ok(fired.clone());
        }
        match tokio::time::timeout(timeout, &mut self.reply.rx).await {
            Ok(Ok(fired)) => {
                self.reply.fired = Some(fired.clone());
                Ok(fired)
            }
            Ok(Err(_)) => bail!("the fault proxy stopped before the rule fired"),
            Err(_) => bail!("no matching request within {timeout:?}"),
        }
    }

    /// Lets the reply go on to the client.
    pub fn release(&mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
    }
}

struct Rule {
    opcodes: Vec<i32>,
    body_contains: Option<Vec<u8>>,
    outcome: Outcome,
    then: Then,
    fired: oneshot::Sender<Fired>,
    /// A reply held back, not lost: forwarded when this resolves (see [`HeldReply`]).
    hold: Option<oneshot::Receiver<()>>,
}

impl Rule {
    fn matches(&self, header: RequestHeader, body: &[u8]) -> bool {
        self.opcodes.contains(&header.opcode)
            && self.body_contains.as_deref().is_none_or(|needle| contains(body, needle))
            && !self.fired.is_closed()
    }

    fn accepts(&self, applied: bool) -> bool {
        match self.outcome {
            Outcome::Applied => applied,
            Outcome::Refused => !applied,
            Outcome::Any => true,
            Outcome::NotSent => false,
        }
    }
}

/// TLS at both ends of a proxy (from `EnsembleTls::proxy_tls`): towards its clients as a
/// server, towards the ZooKeeper servers as a client.
#[derive(Clone)]
pub struct ProxyTls {
    pub server: Arc<rustls::ServerConfig>,
    pub upstream: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ProxyTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyTls").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    upstreams: Vec<SocketAddr>,
    /// Terminate TLS on both sides (the ensemble serves TLS only).
    tls: Option<ProxyTls>,
    next_upstream: AtomicUsize,
    rules: Mutex<VecDeque<Rule>>,
    forwarded: Mutex<HashMap<i32, u64>>,
    accepted: AtomicU64,
    lost: AtomicU64,
    /// Cancelled to close every current connection (a new token is put in its place).
    connections: Mutex<CancellationToken>,
    /// True while cut off: nothing is forwarded, nothing connects upstream.
    blackholed: watch::Sender<bool>,
    /// True while every new connection is closed at once.
    refusing: std::sync::atomic::AtomicBool,
}

/// A TCP proxy in front of ZooKeeper servers that loses replies on command. Dropping it
/// stops it and closes its connections.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 in front of `upstreams` (each new connection
    /// goes to the next server in rotation that accepts it).
    pub async fn start(upstreams: impl IntoIterator<Item = SocketAddr>) -> Result<Self> {
        Self::listen(upstreams.into_iter().collect(), None).await
    }

    /// As [`FaultProxy::start`], in front of servers that serve TLS only: TLS is
    /// terminated on both sides (see the module's documentation).
    pub async fn start_tls(upstreams: impl IntoIterator<Item = SocketAddr>, tls: ProxyTls) -> Result<Self> {
        Self::listen(upstreams.into_iter().collect(), Some(tls)).await
    }

    async fn listen(upstreams: Vec<SocketAddr>, tls: Option<ProxyTls>) -> Result<Self> {
        anyhow::ensure!(!upstreams.is_empty(), "a fault proxy needs at least one ZooKeeper server");
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the fault proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { upstreams, tls, ..Default::default() });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, shared.clone(), stop.clone()));
        Ok(Self { addr, shared, stop })
    }

    /// In front of every server of an ensemble; over TLS when the ensemble serves TLS,
    /// presenting the testkit's own client certificate to the servers.
    pub async fn for_ensemble(ensemble: &crate::Ensemble) -> Result<Self> {
        match ensemble.tls() {
            Some(tls) => Self::for_ensemble_as(ensemble, tls.admin()).await,
            None => Self::start((0..ensemble.len()).map(|i| ensemble.address(i))).await,
        }
    }

    /// In front of every server of an ensemble that serves TLS, presenting `client`'s
    /// certificate to the servers (the identity the proxied client would have).
    pub async fn for_ensemble_as(ensemble: &crate::Ensemble, client: &crate::ClientCert) -> Result<Self> {
        let tls = ensemble.tls().context("the ensemble does not serve TLS")?.proxy_tls(client)?;
        Self::start_tls((0..ensemble.len()).map(|i| ensemble.address(i)), tls).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connect string for clients that should go through the proxy.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// Arms a one-shot rule: the next client request that matches is forwarded, its reply
    /// (once the server sent it) is discarded and that connection is closed on both sides.
    /// Rules are tried in the order they were armed.
    pub fn lose_next_reply(&self, rule: Match<'_>) -> LostReply {
        let (tx, rx) = oneshot::channel();
        self.arm(rule, tx, None);
        LostReply { rx, fired: None }
    }

    /// Arms a one-shot rule that holds a reply back instead of losing it: the next client
    /// request that matches is forwarded, and its reply (with everything after it on that
    /// connection) waits in the proxy until [`HeldReply::release`]. The moment between a
    /// write being applied and its client hearing so, made as long as a test needs (to
    /// stop the client in it, say). `rule.then` is not used.
    pub fn hold_next_reply(&self, rule: Match<'_>) -> HeldReply {
        let (tx, rx) = oneshot::channel();
        let (release, hold) = oneshot::channel();
        self.arm(rule, tx, Some(hold));
        HeldReply { reply: LostReply { rx, fired: None }, release: Some(release) }
    }

    fn arm(&self, rule: Match<'_>, fired: oneshot::Sender<Fired>, hold: Option<oneshot::Receiver<()>>) {
        self.shared.rules.lock().expect("not poisoned").push_back(Rule {
            opcodes: rule.opcodes.to_vec(),
            body_contains: rule.body_contains.map(|s| s.as_bytes().to_vec()),
            outcome: rule.outcome,
            then: rule.then,
            fired,
            hold,
        });
    }

    /// Client requests forwarded so far with this opcode (also the ones whose reply was lost).
    pub fn forwarded(&self, opcode: i32) -> u64 {
        self.shared.forwarded.lock().expect("not poisoned").get(&opcode).copied().unwrap_or(0)
    }

    /// Client connections accepted so far (a reconnect is one more).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Replies lost so far.
    pub fn replies_lost(&self) -> u64 {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// Closes every current connection without losing anything in particular.
    pub fn disconnect_all(&self) {
        let mut token = self.shared.connections.lock().expect("not poisoned");
        token.cancel();
        *token = CancellationToken::new();
    }

    /// Cuts the clients off the ensemble until [`FaultProxy::heal`]: every frame in either
    /// direction is held back, connections stay open (no reset tells anyone), and new
    /// ones are accepted but never connected upstream.
    pub fn blackhole(&self) {
        self.shared.blackholed.send_replace(true);
    }

    /// Ends a [`FaultProxy::blackhole`]: closes every connection that lived through it
    /// (dropping what it held back) and forwards again.
    pub fn heal(&self) {
        self.disconnect_all();
        self.shared.refusing.store(false, Ordering::SeqCst);
        self.shared.blackholed.send_replace(false);
    }

    /// Closes every new connection at once until [`FaultProxy::heal`], as servers that are
    /// down do: clients fail fast and keep trying.
    pub fn refuse(&self) {
        self.shared.refusing.store(true, Ordering::SeqCst);
        self.disconnect_all();
    }

    pub fn is_blackholed(&self) -> bool {
        *self.shared.blackholed.borrow()
    }
}

/// Waits while the proxy is cut off.
async fn while_blackholed(shared: &Shared) {
    let mut cut = shared.blackholed.subscribe();
    let _ = cut.wait_for(|cut| !*cut).await;
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.shared.connections.lock().expect("not poisoned").cancel();
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (client, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "fault proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let closed = shared.connections.lock().expect("not poisoned").clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            tokio::select! {
                // A closed connection forwards nothing more, also what a blackhole held.
                biased;
                _ = closed.cancelled() => {}
                result = serve(&shared, client) => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "fault proxy: connection ended");
                    }
                }
            }
        });
    }
}

/// The armed request a connection forwarded and waits on, and what to tell the client
/// side once its reply is in.
struct Pending {
    xid: i32,
    opcode: i32,
    body: Vec<u8>,
    rule: Rule,
    /// Sent true to go on forwarding (the reply did not suit the rule and was forwarded).
    verdict: oneshot::Sender<bool>,
}

async fn connect_upstream(shared: &Shared) -> Result<TcpStream> {
    let n = shared.upstreams.len();
    let first = shared.next_upstream.fetch_add(1, Ordering::SeqCst);
    let mut last_error = None;
    for i in 0..n {
        let addr = shared.upstreams[(first + i) % n];
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Ok(Err(err)) => last_error = Some(anyhow::Error::from(err).context(format!("connecting to {addr}"))),
            Err(_) => last_error = Some(anyhow::anyhow!("connecting to {addr} timed out")),
        }
    }
    Err(last_error.expect("at least one upstream"))
}

async fn serve(shared: &Shared, client: TcpStream) -> Result<()> {
    if shared.refusing.load(Ordering::SeqCst) {
        return Ok(()); // dropping it closes it
    }
    client.set_nodelay(true)?;
    // A cut-off network completes no handshake either.
    while_blackholed(shared).await;
    let Some(tls) = &shared.tls else {
        let server = connect_upstream(shared).await?;
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        return forward(shared, client_read, client_write, server_read, server_write).await;
    };
    let client = tokio_rustls::TlsAcceptor::from(tls.server.clone())
        .accept(client)
        .await
        .context("TLS handshake with the client")?;
    let server = connect_upstream(shared).await?;
    let name = rustls::pki_types::ServerName::from(server.peer_addr()?.ip());
    let server = tokio_rustls::TlsConnector::from(tls.upstream.clone())
        .connect(name, server)
        .await
        .context("TLS handshake with the server")?;
    let (client_read, client_write) = tokio::io::split(client);
    let (server_read, server_write) = tokio::io::split(server);
    forward(shared, client_read, client_write, server_read, server_write).await
}

async fn forward(
    shared: &Shared,
    client_read: impl AsyncRead + Unpin,
    client_write: impl AsyncWrite + Unpin,
    server_read: impl AsyncRead + Unpin,
    server_write: impl AsyncWrite + Unpin,
) -> Result<()> {
    let pending: Mutex<Option<Pending>> = Mutex::new(None);
    // Whichever direction ends first ends the connection: dropping the halves closes both.
    tokio::select! {
        result = client_to_server(shared, client_read, server_write, &pending) => result,
        result = server_to_client(shared, server_read, client_write, &pending) => result,
    }
}

async fn client_to_server(
    shared: &Shared,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    pending: &Mutex<Option<Pending>>,
) -> Result<()> {
    // The ConnectRequest: no header.
    let Some(connect) = read_frame(&mut from).await? else { return Ok(()) };
    write_frame(&mut to, &connect).await?;
    loop {
        let Some(frame) = read_frame(&mut from).await? else { return Ok(()) };
        let header = parse_request(&frame).context("a client frame without a request header")?;
        let body = &frame[REQUEST_HEADER_LEN..];
        let rule = {
            let mut rules = shared.rules.lock().expect("not poisoned");
            rules.retain(|r| !r.fired.is_closed()); // the test dropped its handle
            rules.iter().position(|r| r.matches(header, body)).and_then(|i| rules.remove(i))
        };
        while_blackholed(shared).await;
        *shared.forwarded.lock().expect("not poisoned").entry(header.opcode).or_default() += 1;
        let Some(rule) = rule else {
            write_frame(&mut to, &frame).await?;
            continue;
        };
        if rule.outcome == Outcome::NotSent {
            shared.lost.fetch_add(1, Ordering::SeqCst);
            tracing::info!(
                opcode = header.opcode,
                xid = header.xid,
                "fault proxy: request dropped, closing the connection"
            );
            let fired =
                Fired { opcode: header.opcode, xid: header.xid, zxid: 0, err: 0, applied: false, body: body.to_vec() };
            let _ = rule.fired.send(fired);
            return Ok(());
        }
        let (verdict, go_on) = oneshot::channel();
        *pending.lock().expect("not poisoned") =
            Some(Pending { xid: header.xid, opcode: header.opcode, body: body.to_vec(), rule, verdict });
        write_frame(&mut to, &frame).await?;
        // Nothing more from this client until the reply is in.
        match go_on.await {
            Ok(true) => continue,
            _ => return std::future::pending().await, // the other side closes the connection
        }
    }
}

async fn server_to_client(
    shared: &Shared,
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    pending: &Mutex<Option<Pending>>,
) -> Result<()> {
    // The ConnectResponse: no header.
    let Some(connected) = read_frame(&mut from).await? else { return Ok(()) };
    write_frame(&mut to, &connected).await?;
    loop {
        let Some(frame) = read_frame(&mut from).await? else { return Ok(()) };
        let header = parse_reply(&frame).context("a server frame without a reply header")?;
        while_blackholed(shared).await;
        let armed = {
            let mut pending = pending.lock().expect("not poisoned");
            match pending.as_ref() {
                Some(p) if p.xid == header.xid => pending.take(),
                _ => None,
            }
        };
        let Some(armed) = armed else {
            write_frame(&mut to, &frame).await?;
            continue;
        };
        let applied = reply_applied(armed.opcode, header, &frame[REPLY_HEADER_LEN..]);
        if !armed.rule.accepts(applied) {
            // Not the outcome the test waits for: pass it on and stay armed.
            write_frame(&mut to, &frame).await?;
            shared.rules.lock().expect("not poisoned").push_front(armed.rule);
            let _ = armed.verdict.send(true);
            continue;
        }
        let Pending { xid, opcode, body, rule, verdict } = armed;
        if let Some(hold) = rule.hold {
            tracing::info!(opcode, xid, zxid = header.zxid, applied, "fault proxy: reply held");
            let _ = rule.fired.send(Fired { opcode, xid, zxid: header.zxid, err: header.err, applied, body });
            let _ = hold.await; // released, or the test dropped its handle
            write_frame(&mut to, &frame).await?;
            let _ = verdict.send(true);
            continue;
        }
        let armed = Pending { xid, opcode, body, rule, verdict };
        shared.lost.fetch_add(1, Ordering::SeqCst);
        match armed.rule.then {
            Then::Nothing => {}
            Then::Blackhole => {
                shared.blackholed.send_replace(true);
            }
            Then::Refuse => shared.refusing.store(true, Ordering::SeqCst),
        }
        tracing::info!(
            opcode = armed.opcode,
            xid = header.xid,
            zxid = header.zxid,
            err = header.err,
            applied,
            "fault proxy: reply lost, closing the connection"
        );
        let _ = armed.verdict.send(false);
        let _ = armed.rule.fired.send(Fired {
            opcode: armed.opcode,
            xid: header.xid,
            zxid: header.zxid,
            err: header.err,
            applied,
            body: armed.body,
        });
        return Ok(());
    }
}

/// Frames above this are not ZooKeeper's (its jute.maxbuffer is about 1 MiB).
const MAX_FRAME: usize = 64 << 20;
pub const REQUEST_HEADER_LEN: usize = 8;
pub const REPLY_HEADER_LEN: usize = 16;

/// Reads one length-prefixed frame; None at a clean end of stream between frames.
pub async fn read_frame(from: &mut (impl AsyncRead + Unpin)) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = from.read(&mut len[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            bail!("end of stream inside a frame's length");
        }
        got += n;
    }
    let len = i32::from_be_bytes(len);
    if len < 0 || len as usize > MAX_FRAME {
        bail!("frame length {len} is not ZooKeeper's");
    }
    let mut frame = vec![0u8; len as usize];
    from.read_exact(&mut frame).await.context("end of stream inside a frame")?;
    Ok(Some(frame))
}

async fn write_frame(to: &mut (impl AsyncWrite + Unpin), frame: &[u8]) -> Result<()> {
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&(frame.len() as i32).to_be_bytes());
    out.extend_from_slice(frame);
    to.write_all(&out).await?;
    // A TLS stream may hold the record back until flushed.
    to.flush().await?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub xid: i32,
    pub opcode: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyHeader {
    pub xid: i32,
    pub zxid: i64,
    pub err: i32,
}

pub fn parse_request(frame: &[u8]) -> Option<RequestHeader> {
    let mut r = Reader(frame);
    Some(RequestHeader { xid: r.i32()?, opcode: r.i32()? })
}

pub fn parse_reply(frame: &[u8]) -> Option<ReplyHeader> {
    let mut r = Reader(frame);
    Some(ReplyHeader { xid: r.i32()?, zxid: r.i64()?, err: r.i32()? })
}

/// Whether a reply says its request was applied. A failed multi has err 0 in its header
/// (ZooKeeper 3.8) and one error result per operation, so its first result tells.
pub fn reply_applied(opcode: i32, header: ReplyHeader, body: &[u8]) -> bool {
    if header.err != 0 {
        return false;
    }
    if opcode == op::MULTI {
        let mut r = Reader(body);
        return r.i32().is_some_and(|first_type| first_type != op::ERROR);
    }
    true
}

/// The operations of a request body (after its header) with their paths.
pub fn request_operations(opcode: i32, body: &[u8]) -> Option<Vec<(i32, String)>> {
    let mut r = Reader(body);
    if opcode != op::MULTI {
        return Some(vec![(opcode, r.string()?)]);
    }
    let mut ops = Vec::new();
    loop {
        // MultiHeader {type: i32, done: bool, err: i32}, then the operation's record.
        let (kind, done, _err) = (r.i32()?, r.u8()?, r.i32()?);
        if done != 0 || kind == -1 {
            return Some(ops);
        }
        let path = r.string()?;
        match kind {
            op::CREATE | op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => {
                r.buffer()?;
                for _ in 0..r.i32()?.max(0) {
                    // ACL: perms, scheme, id
                    r.i32()?;
                    r.buffer()?;
                    r.buffer()?;
                }
                r.i32()?; // flags
                if kind == op::CREATE_TTL {
                    r.i64()?;
                }
            }
            op::DELETE | op::CHECK => {
                r.i32()?; // version
            }
            op::SET_DATA => {
                r.buffer()?;
                r.i32()?;
            }
            _ => return None,
        }
        ops.push((kind, path));
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Jute's big-endian records.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    /// A length-prefixed buffer (-1: null).
    fn buffer(&mut self) -> Option<&'a [u8]> {
        let len = self.i32()?;
        if len < 0 {
            return Some(&[]);
        }
        self.take(len as usize)
    }

    fn string(&mut self) -> Option<String> {
        Some(String::from_utf8_lossy(self.buffer()?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as i32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }

    fn multi_header(out: &mut Vec<u8>, kind: i32, done: bool) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(done as u8);
        out.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// A claim-like multi: check the item, create the claim (one ACL), set the history.
    fn claim_multi() -> Vec<u8> {
        let mut body = Vec::new();
        multi_header(&mut body, op::CHECK, false);
        string(&mut body, "/q/items/b0/item-0000000001");
        body.extend_from_slice(&3i32.to_be_bytes());
        multi_header(&mut body, op::CREATE2, false);
        string(&mut body, "/q/claims/b0.0000000001");
        string(&mut body, "{\"pod\":\"p\"}");
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&31i32.to_be_bytes());
        string(&mut body, "world");
        string(&mut body, "anyone");
        body.extend_from_slice(&1i32.to_be_bytes()); // ephemeral
        multi_header(&mut body, op::SET_DATA, false);
        string(&mut body, "/q/attempts/b0.0000000001");
        string(&mut body, "{}");
        body.extend_from_slice(&(-1i32).to_be_bytes());
        multi_header(&mut body, -1, true);
        body
    }

    #[test]
    fn parses_request_and_reply_headers() {
        let mut frame = Vec::new();
        frame.extend_from_slice(&7i32.to_be_bytes());
        frame.extend_from_slice(&op::CREATE2.to_be_bytes());
        string(&mut frame, "/a/b");
        assert_eq!(parse_request(&frame), Some(RequestHeader { xid: 7, opcode: op::CREATE2 }));
        assert_eq!(request_operations(op::CREATE2, &frame[REQUEST_HEADER_LEN..]), Some(vec![(15, "/a/b".into())]));
        assert_eq!(parse_request(&frame[..5]), None, "too short for a header");

        let mut reply = Vec::new();
        reply.extend_from_slice(&(-1i32).to_be_bytes());
        reply.extend_from_slice(&0x1_0000_0005i64.to_be_bytes());
        reply.extend_from_slice(&(-101i32).to_be_bytes());
        let header = parse_reply(&reply).unwrap();
        assert_eq!(header, ReplyHeader { xid: -1, zxid: 0x1_0000_0005, err: -101 });
        assert!(!reply_applied(op::DELETE, header, &[]), "NoNode is refused");
        assert!(reply_applied(op::DELETE, ReplyHeader { err: 0, ..header }, &[]));
    }

    #[test]
    fn lists_the_operations_of_a_multi_and_tells_a_failed_one() {
        let body = claim_multi();
        let ops = request_operations(op::MULTI, &body).unwrap();
        assert_eq!(
            ops,
            vec![
                (op::CHECK, "/q/items/b0/item-0000000001".to_owned()),
                (op::CREATE2, "/q/claims/b0.0000000001".to_owned()),
                (op::SET_DATA, "/q/attempts/b0.0000000001".to_owned()),
            ]
        );
        assert!(contains(&body, b"/claims/") && !contains(&body, b"/dead/"));

        let ok = ReplyHeader { xid: 3, zxid: 9, err: 0 };
        let mut failed = Vec::new();
        multi_header(&mut failed, op::ERROR, false); // one error result per operation
        assert!(!reply_applied(op::MULTI, ok, &failed));
        let mut applied = Vec::new();
        multi_header(&mut applied, op::CHECK, false);
        assert!(reply_applied(op::MULTI, ok, &applied));
    }

    #[tokio::test]
    async fn reads_frames_delivered_in_pieces_and_stops_cleanly_between_frames() {
        let (mut writer, mut reader) = tokio::io::duplex(64);
        let frames: Vec<Vec<u8>> = vec![vec![1, 2, 3], vec![], (0..200u8).collect()];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend_from_slice(&(f.len() as i32).to_be_bytes());
            wire.extend_from_slice(f);
        }
        let feeder = tokio::spawn(async move {
            for piece in wire.chunks(3) {
                writer.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        for f in &frames {
            assert_eq!(read_frame(&mut reader).await.unwrap().as_ref(), Some(f));
        }
        feeder.await.unwrap();
        assert_eq!(read_frame(&mut reader).await.unwrap(), None, "clean end between frames");

        let mut cut: &[u8] = &[0, 0, 0, 5, 1, 2];
        assert!(read_frame(&mut cut).await.is_err(), "end of stream inside a frame");
        let mut bogus: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut bogus).await.is_err(), "negative length");
    }

    #[test]
    fn a_rule_matches_opcode_and_body() {
        let (tx, _rx) = oneshot::channel();
        let rule = Rule {
            opcodes: vec![op::MULTI],
            body_contains: Some(b"/claims/".to_vec()),
            outcome: Outcome::Applied,
            then: Then::Nothing,
            fired: tx,
            hold: None,
        };
        let body = claim_multi();
        assert!(rule.matches(RequestHeader { xid: 1, opcode: op::MULTI }, &body));
        assert!(!rule.matches(RequestHeader { xid: 1, opcode: op::CREATE2 }, &body));
        assert!(!rule.matches(RequestHeader { xid: 1, opcode: op::MULTI }, b"/items/b0/item-"));
        assert!(rule.accepts(true) && !rule.accepts(false));
    }
}
