//! A real ZooKeeper ensemble on demand: 1 or 3 servers of Debian's `zookeeper` package on
//! 127.0.0.1, each with its own data directory, for tests, benchmarks and the local run.
//!
//! Invariants:
//! - Every server is a child JVM of this process, started with `PR_SET_PDEATHSIG`, so even
//!   a test binary killed with SIGKILL leaves no orphan JVM; `Drop` kills and reaps them
//!   (also while a test panics).
//! - When the owning thread panics, the ensemble's directory (configs, data, one log per
//!   server) is kept and its path printed, so a failed test can be read afterwards.
//! - Fault injection (`kill`, `pause`, `resume`, `restart`) acts on one server by index.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where Debian's `zookeeper` package puts the server; `scripts/install-deps.sh` installs it.
const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
/// The slf4j binding that sends server logs to stderr (captured into `server-N.log`).
const SLF4J_SIMPLE_JAR: &str = "/usr/share/java/slf4j-simple.jar";
/// Netty's parts that Debian's `zookeeper.jar` does not list in its manifest's Class-Path
/// but `NettyServerCnxnFactory` needs for TLS (its SslHandler is a ByteToMessageDecoder).
const NETTY_TLS_JARS: &str = "/usr/share/java/netty-codec.jar:/usr/share/java/netty-resolver.jar:\
                              /usr/share/java/netty-transport-native-unix-common.jar";

/// ZooKeeper's tick. Session timeouts are bounded by 2..=20 ticks unless set explicitly;
/// they are set explicitly below so tests may use short sessions (1 s) and the sidecar
/// its production default (10 s).
const TICK_MS: u64 = 250;
const MIN_SESSION_TIMEOUT_MS: u64 = 500;
const MAX_SESSION_TIMEOUT_MS: u64 = 60_000;

/// Settings for [`Ensemble::start_with`].
#[derive(Debug, Clone)]
pub struct EnsembleOptions {
    /// Number of servers: 1 (standalone) or an odd number for a quorum.
    pub servers: usize,
    /// How long to wait for a quorum to serve before giving up.
    pub start_timeout: Duration,
    /// Keep the data directory even when nothing failed (the local run prints it).
    pub keep_dir: bool,
    /// JVM heap of each server (a million znodes need about 1 GiB).
    pub heap_mb: u32,
    /// Each server on a host of its own (a network namespace on a bridge, see `netns`),
    /// so that [`Ensemble::partition`] can cut one off. Needs root.
    pub isolated_network: bool,
    /// How often the servers remove empty container nodes (ZooKeeper's default is a
    /// minute); short, a test sees the reaper act at once.
    pub container_check_interval: Option<Duration>,
    /// Serve TLS only (see `tls`): `secureClientPort` with Netty and no plain client port,
    /// client certificates required, the quorum over TLS too. Clients then need
    /// [`Ensemble::tls`]'s CA and a certificate it issues.
    pub tls: bool,
}

impl Default for EnsembleOptions {
    fn default() -> Self {
        Self {
            servers: 3,
            start_timeout: Duration::from_secs(60),
            keep_dir: false,
            heap_mb: 256,
            isolated_network: false,
            container_check_interval: None,
            tls: false,
        }
    }
}

/// The role a server reports through the `srvr` four-letter word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Leader,
    Follower,
    Standalone,
    Observer,
}

#[derive(Debug)]
struct Server {
    id: usize,
    heap_mb: u32,
    container_check_interval: Option<Duration>,
    host: Ipv4Addr,
    /// The network namespace it runs in, when isolated.
    namespace: Option<String>,
    client_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
    partitioned: bool,
}

impl Server {
    fn config_path(&self) -> PathBuf {
        self.dir.join("zoo.cfg")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("server-{}.log", self.id))
    }

    fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((self.host, self.client_port))
    }

    fn spawn(&mut self) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening log of ZooKeeper server {}", self.id))?;
        let mut command = match &self.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace, "java"]);
                command
            }
            None => Command::new("java"),
        };
        command
            .arg(format!("-Xmx{}m", self.heap_mb))
            .args(self.container_check_interval.map(|i| format!("-Dznode.container.checkIntervalMs={}", i.as_millis())))
            .args([
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Xss512k",
                "-Dzookeeper.admin.enableServer=false",
                "-Dzookeeper.cnxTimeout=1000",
                // A follower that rejoins gets a whole snapshot and writes it before it
                // acknowledges, instead of a diff over its own log: 3.8.0 can leave holes
                // of committed transactions in a follower's log that was stopped
                // mid-write (seen in the fault suite), and a restart then replays the hole.
                // The chart sets the same (`zookeeper.forceSnapshotSync`).
                "-Dzookeeper.forceSnapshotSync=true",
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-cp",
                &format!("{ZOOKEEPER_JAR}:{SLF4J_SIMPLE_JAR}:{NETTY_TLS_JARS}"),
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the JVM
        // when the thread that spawned it exits, so no JVM outlives its test.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child =
            command.spawn().with_context(|| format!("starting ZooKeeper server {} (is a JRE installed?)", self.id))?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    fn signal(&self, signal: libc::c_int) -> Result<()> {
        let child = self.child.as_ref().with_context(|| format!("ZooKeeper server {} is not running", self.id))?;
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
        let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        if rc != 0 {
            bail!("signal {signal} to ZooKeeper server {}: {}", self.id, std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                // SAFETY: as in `signal`; a stopped process must be continued to die promptly.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }
}

/// A running ZooKeeper ensemble. Dropping it stops every server.
#[derive(Debug)]
pub struct Ensemble {
    servers: Vec<Server>,
    dir: Option<tempfile::TempDir>,
    keep_dir: bool,
    /// The servers' hosts when isolated (removed after the servers stop).
    network: Option<crate::netns::NetLab>,
    tls: Option<crate::tls::EnsembleTls>,
}

impl Ensemble {
    /// Starts a 3-node ensemble and waits until it serves.
    pub async fn start() -> Result<Self> {
        Self::start_with(EnsembleOptions::default()).await
    }

    /// Starts a single standalone server and waits until it serves.
    pub async fn start_single() -> Result<Self> {
        Self::start_with(EnsembleOptions { servers: 1, ..Default::default() }).await
    }

    pub async fn start_with(options: EnsembleOptions) -> Result<Self> {
        check_installed()?;
        if options.servers == 0 || options.servers.is_multiple_of(2) {
            bail!("an ensemble needs an odd number of servers, got {}", options.servers);
        }
        let dir =
            tempfile::Builder::new().prefix("paddock-zk-").tempdir().context("creating the ensemble's directory")?;
        let network = match options.isolated_network {
            true => Some(crate::netns::NetLab::create(options.servers).context("isolating the servers' networks")?),
            false => None,
        };
        let host = |i: usize| network.as_ref().map_or(Ipv4Addr::LOCALHOST, |n| n.address(i));
        let ports = free_ports(options.servers * 3)?;
        let quorum: Vec<QuorumMember> = (0..options.servers)
            .map(|i| QuorumMember {
                id: i + 1,
                host: host(i),
                client_port: ports[3 * i],
                peer_port: ports[3 * i + 1],
                election_port: ports[3 * i + 2],
            })
            .collect();
        let tls = match options.tls {
            true => Some(crate::tls::EnsembleTls::create(dir.path()).context("making the ensemble's certificates")?),
            false => None,
        };
        let mut servers = Vec::with_capacity(options.servers);
        for (index, member) in quorum.iter().enumerate() {
            let server_dir = dir.path().join(format!("server-{}", member.id));
            fs::create_dir_all(server_dir.join("data"))?;
            fs::write(server_dir.join("data/myid"), format!("{}\n", member.id))?;
            let mut config = server_config(&server_dir, member, &quorum);
            if let Some(tls) = &tls {
                let keystore = tls.write_server_store(&server_dir, member.host.into())?;
                config = config.replace(
                    &format!("clientPort={}\nclientPortAddress={}\n", member.client_port, member.host),
                    &tls.server_config(&keystore, member.client_port, member.host.into()),
                );
            }
            fs::write(server_dir.join("zoo.cfg"), config)?;
            servers.push(Server {
                id: member.id,
                heap_mb: options.heap_mb,
                container_check_interval: options.container_check_interval,
                host: member.host,
                namespace: network.as_ref().map(|n| n.namespace(index)),
                client_port: member.client_port,
                dir: server_dir,
                child: None,
                paused: false,
                partitioned: false,
            });
        }
        let mut ensemble = Ensemble { servers, dir: Some(dir), keep_dir: options.keep_dir, network, tls };
        for server in &mut ensemble.servers {
            server.spawn()?;
        }
        ensemble.wait_until_serving(options.start_timeout).await?;
        Ok(ensemble)
    }

    /// The connect string for clients: every server, comma separated.
    /// Keeps the data directories and logs when the ensemble is dropped, as a failed test
    /// does: for a run that found something (the fault suite's violations).
    pub fn keep_logs(&mut self) {
        self.keep_dir = true;
    }

    pub fn connect_string(&self) -> String {
        self.servers.iter().map(|s| s.client_addr().to_string()).collect::<Vec<_>>().join(",")
    }

    /// The certificates of an ensemble that serves TLS (None: plain text).
    pub fn tls(&self) -> Option<&crate::tls::EnsembleTls> {
        self.tls.as_ref()
    }

    /// A client on every server, as the testkit's admin: over TLS with the testkit's own
    /// certificate when the ensemble serves TLS, else plain.
    pub async fn admin(&self) -> Result<zookeeper_client::Client> {
        let connect = self.connect_string();
        match &self.tls {
            Some(tls) => crate::provision::admin_tls(&connect, tls.zk_options(tls.admin())?).await,
            None => crate::provision::admin(&connect).await,
        }
    }

    /// The client address of one server.
    pub fn address(&self, index: usize) -> SocketAddr {
        self.servers[index].client_addr()
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// Where configs, data and logs live.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).expect("ensemble directory exists until drop")
    }

    /// Requests one server has received since it started (`mntr`'s `zk_packets_received`,
    /// pings included).
    pub async fn packets_received(&self, index: usize) -> Result<u64> {
        let mntr = self.four_letter_word(index, "mntr").await?;
        parse_mntr(&mntr)
            .into_iter()
            .find_map(|(k, v)| (k == "zk_packets_received").then(|| v.parse().ok()).flatten())
            .with_context(|| format!("no zk_packets_received in server {index}'s mntr"))
    }

    /// Sends a four-letter word (`srvr`, `mntr`, `ruok`, ...) to one server.
    pub async fn four_letter_word(&self, index: usize, word: &str) -> Result<String> {
        let addr = self.servers[index].client_addr();
        match &self.tls {
            Some(tls) => tls.four_letter_word(addr, word).await,
            None => four_letter_word(addr, word).await,
        }
    }

    /// The role of one server, or None when it does not answer or does not serve.
    pub async fn mode(&self, index: usize) -> Option<Mode> {
        let server = &self.servers[index];
        if server.paused || server.partitioned || server.child.is_none() {
            return None;
        }
        let reply = self.four_letter_word(index, "srvr").await.ok()?;
        let mode = reply.lines().find_map(|l| l.strip_prefix("Mode: "))?;
        match mode.trim() {
            "leader" => Some(Mode::Leader),
            "follower" => Some(Mode::Follower),
            "standalone" => Some(Mode::Standalone),
            "observer" => Some(Mode::Observer),
            _ => None,
        }
    }

    /// Index of the current leader (or of the standalone server), if one serves.
    pub async fn leader(&self) -> Option<usize> {
        for index in 0..self.servers.len() {
            if matches!(self.mode(index).await, Some(Mode::Leader | Mode::Standalone)) {
                return Some(index);
            }
        }
        None
    }

    /// Waits until a leader serves, returning its index.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().await {
                return Ok(leader);
            }
            if Instant::now() > deadline {
                bail!("no ZooKeeper leader within {timeout:?}; logs in {}", self.dir().display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every running server serves (has a role) and one is the leader.
    pub async fn wait_until_serving(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut serving = 0;
            let mut leaders = 0;
            let mut running = 0;
            for index in 0..self.servers.len() {
                let server = &self.servers[index];
                if server.child.is_none() || server.paused || server.partitioned {
                    continue;
                }
                running += 1;
                match self.mode(index).await {
                    Some(Mode::Leader | Mode::Standalone) => {
                        serving += 1;
                        leaders += 1
                    }
                    Some(_) => serving += 1,
                    None => {}
                }
            }
            if leaders == 1 && serving == running {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "ZooKeeper ensemble not serving within {timeout:?} ({serving}/{running} serving); logs in {}",
                    self.dir().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails when a server we started has exited by itself (bad config, port taken).
    fn check_alive(&self) -> Result<()> {
        for server in &self.servers {
            if let Some(child) = &server.child {
                // try_wait needs &mut; /proc tells whether the pid still exists.
                let proc_path = format!("/proc/{}/stat", child.id());
                let stat = fs::read_to_string(&proc_path).unwrap_or_default();
                if stat.is_empty() || stat.contains(") Z ") {
                    let log = fs::read_to_string(server.log_path()).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    bail!(
                        "ZooKeeper server {} exited; last log lines:\n{}",
                        server.id,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        Ok(())
    }

    /// SIGKILLs one server (a crash: no clean shutdown).
    pub fn kill(&mut self, index: usize) {
        tracing::info!(server = index, "killing ZooKeeper server");
        self.servers[index].kill();
    }

    /// SIGSTOPs one server: it keeps its sockets but answers nothing.
    pub fn pause(&mut self, index: usize) -> Result<()> {
        tracing::info!(server = index, "pausing ZooKeeper server");
        self.servers[index].signal(libc::SIGSTOP)?;
        self.servers[index].paused = true;
        Ok(())
    }

    /// SIGCONTs a paused server.
    pub fn resume(&mut self, index: usize) -> Result<()> {
        tracing::info!(server = index, "resuming ZooKeeper server");
        self.servers[index].signal(libc::SIGCONT)?;
        self.servers[index].paused = false;
        Ok(())
    }

    /// Cuts one server off the network: peers and clients can no longer reach it, nor it
    /// them (needs `isolated_network`).
    pub fn partition(&mut self, index: usize) -> Result<()> {
        tracing::info!(server = index, "partitioning ZooKeeper server");
        let network = self.network.as_ref().context("partition needs EnsembleOptions::isolated_network")?;
        network.partition(index)?;
        self.servers[index].partitioned = true;
        Ok(())
    }

    /// Reconnects a partitioned server.
    pub fn heal(&mut self, index: usize) -> Result<()> {
        tracing::info!(server = index, "healing ZooKeeper server's partition");
        let network = self.network.as_ref().context("heal needs EnsembleOptions::isolated_network")?;
        network.heal(index)?;
        self.servers[index].partitioned = false;
        Ok(())
    }

    /// Starts a killed server again with its data; waits until it serves.
    pub async fn restart(&mut self, index: usize, timeout: Duration) -> Result<()> {
        tracing::info!(server = index, "restarting ZooKeeper server");
        self.servers[index].kill();
        self.servers[index].spawn()?;
        self.wait_until_serving(timeout).await
    }

    /// Restarts the servers one at a time, the highest first, each once the one before
    /// serves: what a StatefulSet's controller does after a change of its pod template.
    pub async fn restart_one_at_a_time(&mut self, timeout: Duration) -> Result<()> {
        for index in (0..self.servers.len()).rev() {
            self.restart(index, timeout).await.with_context(|| format!("restarting server {index}"))?;
        }
        Ok(())
    }

    /// Stops every server; the ensemble can be brought back with [`Ensemble::start_all`].
    pub fn stop_all(&mut self) {
        for server in &mut self.servers {
            server.kill();
        }
    }

    /// Starts every stopped server again and waits until the ensemble serves.
    pub async fn start_all(&mut self, timeout: Duration) -> Result<()> {
        for server in &mut self.servers {
            if server.child.is_none() {
                server.spawn()?;
            }
        }
        self.wait_until_serving(timeout).await
    }

    /// A renewed server certificate (`common_name` tells renewals apart), one for every
    /// server as a chart's Secret holds one, written into each server's key store: served
    /// by each server from its next start (TLS ensembles only).
    pub fn renew_server_certificate(&self, common_name: &str) -> Result<crate::tls::Issued> {
        let tls = self.tls.as_ref().context("renewing a server certificate needs EnsembleOptions::tls")?;
        let hosts: Vec<std::net::IpAddr> = self.servers.iter().map(|s| s.host.into()).collect();
        let issued = tls.ca().issue_servers(&hosts, common_name)?;
        self.install_server_certificate(&issued)?;
        Ok(issued)
    }

    /// Writes `issued` (a certificate from the ensemble's CA, e.g. one an operator issued)
    /// into every server's key store: served from each server's next start.
    pub fn install_server_certificate(&self, issued: &crate::tls::Issued) -> Result<()> {
        let tls = self.tls.as_ref().context("installing a server certificate needs EnsembleOptions::tls")?;
        for server in &self.servers {
            tls.replace_server_store(&server.dir, issued)?;
        }
        Ok(())
    }

    /// Process id of one server, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.servers[index].child.as_ref().map(Child::id)
    }
}

impl Drop for Ensemble {
    fn drop(&mut self) {
        self.stop_all();
        self.network.take();
        if let Some(dir) = self.dir.take()
            && (std::thread::panicking() || self.keep_dir)
        {
            let path = dir.keep();
            eprintln!("ZooKeeper ensemble logs kept in {}", path.display());
        }
    }
}

fn check_installed() -> Result<()> {
    if !Path::new(ZOOKEEPER_JAR).exists() || !Path::new(SLF4J_SIMPLE_JAR).exists() {
        bail!(
            "ZooKeeper is not installed ({ZOOKEEPER_JAR} missing): run `bash scripts/install-deps.sh` \
             (installs Debian's zookeeper package and a JRE)"
        );
    }
    Ok(())
}

/// One server's addresses, as every server's config lists them.
struct QuorumMember {
    id: usize,
    host: Ipv4Addr,
    client_port: u16,
    peer_port: u16,
    election_port: u16,
}

fn server_config(dir: &Path, member: &QuorumMember, quorum: &[QuorumMember]) -> String {
    let mut cfg = format!(
        "tickTime={TICK_MS}\n\
         initLimit=20\n\
         syncLimit=8\n\
         minSessionTimeout={MIN_SESSION_TIMEOUT_MS}\n\
         maxSessionTimeout={MAX_SESSION_TIMEOUT_MS}\n\
         dataDir={data}\n\
         clientPort={client_port}\n\
         clientPortAddress={host}\n\
         maxClientCnxns=0\n\
         4lw.commands.whitelist=*\n\
         admin.enableServer=false\n\
         extendedTypesEnabled=true\n\
         autopurge.purgeInterval=0\n",
        data = dir.join("data").display(),
        client_port = member.client_port,
        host = member.host,
    );
    if quorum.len() > 1 {
        for peer in quorum {
            cfg.push_str(&format!("server.{}={}:{}:{}\n", peer.id, peer.host, peer.peer_port, peer.election_port));
        }
    }
    cfg
}

/// Picks distinct free ports by binding to port 0 and letting them go. All listeners are
/// held until every port is chosen, so the picks never collide with each other.
pub fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<std::io::Result<_>>()
        .context("finding free ports on 127.0.0.1")?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Sends a four-letter word to a server and returns its reply.
pub async fn four_letter_word(addr: SocketAddr, word: &str) -> Result<String> {
    let word = word.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(word.as_bytes())?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply)
    })
    .await?
}

/// Parses `mntr` output into (key, value) pairs.
pub fn parse_mntr(reply: &str) -> Vec<(String, String)> {
    reply
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}
