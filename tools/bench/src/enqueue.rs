//! Where a single enqueue's time goes: the same one-item enqueue taken apart, step by step,
//! from the bare ZooKeeper create Curator's `DistributedQueue.put` does to the sidecar's
//! `POST /queue/{name}`. One client, one item at a time; the variants take turns in
//! rounds so that the machine's load falls on all of them alike. Each row also gives the
//! ZooKeeper requests per enqueue (`mntr`, pings included).
//!
//! Every client here — the library's, the sidecar's session (a sidecar of its own) and
//! Curator — is connected to the same server, a follower: a write through a follower
//! takes one hop more than one through the leader, and with the whole connect string each
//! process picks its server at random, so one run compared a sidecar on a follower with a
//! Curator on the leader, the next the other way round.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Result;
use paddock_recipes::queue::{self, NewItem};
use paddock_recipes::{QueueConfig, zk};
use paddock_testkit::{PodClient, Sidecar, SidecarOptions, provision};

use super::queues::paths;
use super::{Bench, Figure, NS, Report};

const CURATOR: &str = "curator DistributedQueue.put";

/// Curator's put, one peer process per round: its figures summed over the rounds.
#[derive(Default)]
struct Curator {
    ops: f64,
    seconds: f64,
    medians: Vec<f64>,
    p99s: Vec<f64>,
}

impl Curator {
    fn add(&mut self, f: &super::peers::PeerFigure) {
        self.ops += f.number("ops").unwrap_or(0.0);
        self.seconds += f.number("seconds").unwrap_or(0.0);
        self.medians.extend(f.number("median_us"));
        self.p99s.extend(f.number("p99_us"));
    }

    fn figure(&self) -> Figure {
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        Figure {
            group: "enqueue parts".into(),
            name: CURATOR.into(),
            ops: self.ops as usize,
            rate: self.ops / self.seconds.max(1e-9),
            median_us: mean(&self.medians),
            p99_us: mean(&self.p99s),
            note: format!(
                "its own process per round, on the follower; median and p99: means of the {} rounds'",
                self.medians.len()
            ),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// One persistent sequential create: what Curator's put sends.
    Create,
    /// The enqueue's multi alone: the receipt and the item, no delete of the receipt.
    Multi,
    /// The multi, deleting the previous call's receipt in it.
    MultiCarrying,
    /// The multi, then the receipt's delete on its own (sent, its reply not awaited).
    MultiThenDelete,
    /// The library's enqueue as the sidecar calls it: the multi, then the receipt's delete.
    Library,
    /// The same, on a session that watches the queue recursively (as the sidecar's config
    /// cache and consumers' views do).
    LibraryWatched,
    /// `POST /queue/{name}` through the sidecar, from reqwest on the bench's tokio runtime.
    Http,
    /// The same from a blocking socket kept alive, as curl or Python's `requests` send it:
    /// no client runtime between the caller and its socket.
    HttpBlocking,
    /// `GET /healthz`: the HTTP exchange alone.
    HttpHop,
}

impl Variant {
    const ALL: [Variant; 9] = [
        Variant::Create,
        Variant::Multi,
        Variant::MultiCarrying,
        Variant::MultiThenDelete,
        Variant::Library,
        Variant::LibraryWatched,
        Variant::Http,
        Variant::HttpBlocking,
        Variant::HttpHop,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Create => "zookeeper create (Curator's put)",
            Variant::Multi => "multi: receipt + item",
            Variant::MultiCarrying => "multi: receipt + item + last receipt's delete",
            Variant::MultiThenDelete => "multi: receipt + item, then its delete",
            Variant::Library => "library enqueue",
            Variant::LibraryWatched => "library enqueue, queue watched",
            Variant::Http => "sidecar HTTP enqueue",
            Variant::HttpBlocking => "sidecar HTTP enqueue, blocking client",
            Variant::HttpHop => "sidecar HTTP GET /healthz",
        }
    }
}

struct Clients {
    plain: zk::Client,
    watched: zk::Client,
    watch: tokio::task::JoinHandle<()>,
    pod: paddock_testkit::PodClient,
    /// The receipt the last `MultiCarrying` made.
    last_receipt: std::sync::Mutex<Option<String>>,
    /// Where the blocking client connects: the sidecar.
    sidecar: std::net::SocketAddr,
}

/// An HTTP/1.1 client on a blocking socket, one request at a time on one connection.
struct BlockingHttp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl BlockingHttp {
    fn connect(addr: std::net::SocketAddr) -> Result<Self> {
        let writer = TcpStream::connect(addr)?;
        writer.set_nodelay(true)?;
        Ok(Self { reader: BufReader::new(writer.try_clone()?), writer })
    }

    /// `POST /queue/anatomy-http` with a 16-byte payload; Err unless 201.
    fn enqueue(&mut self) -> Result<()> {
        const REQUEST: &[u8] =
            b"POST /queue/anatomy-http HTTP/1.1\r\nhost: sidecar\r\ncontent-length: 16\r\n\r\nsixteen-bytes-xx";
        self.writer.write_all(REQUEST)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        anyhow::ensure!(line.starts_with("HTTP/1.1 201"), "enqueue: {}", line.trim());
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" {
                break;
            }
            if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(())
    }
}

fn item() -> NewItem {
    NewItem {
        payload: b"sixteen-bytes-xx".to_vec(),
        content_type: None,
        priority: 0,
        delay: Duration::ZERO,
        group: None,
    }
}

async fn once(clients: &Clients, variant: Variant) -> Result<()> {
    match variant {
        Variant::Create => {
            let mode = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
            clients.plain.create("/bench/anatomy/raw/item-", b"sixteen-bytes-xx", &mode).await?;
        }
        Variant::Multi | Variant::MultiCarrying | Variant::MultiThenDelete => {
            let items = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
            let receipts = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
            let mut multi = clients.plain.new_multi_writer();
            multi.add_create("/bench/anatomy/multi/receipt-x-", b"", &receipts)?;
            multi.add_create("/bench/anatomy/multi/item-", b"sixteen-bytes-xx", &items)?;
            let last = clients.last_receipt.lock().unwrap().take();
            if let (Variant::MultiCarrying, Some(last)) = (variant, &last) {
                multi.add_delete(last, None)?;
            }
            let made = multi.commit().await?;
            let Some(zk::MultiWriteResult::Create { path, .. }) = made.into_iter().next() else {
                anyhow::bail!("the multi's first result is not its receipt's create")
            };
            match variant {
                Variant::MultiCarrying => *clients.last_receipt.lock().unwrap() = Some(path),
                Variant::MultiThenDelete => drop(clients.plain.delete(&path, None)),
                _ => {}
            }
        }
        Variant::Library => {
            queue::enqueue(&clients.plain, &paths("anatomy-lib"), &[item()]).await?;
        }
        Variant::LibraryWatched => {
            queue::enqueue(&clients.watched, &paths("anatomy-watched"), &[item()]).await?;
        }
        Variant::Http => {
            let (status, body) = clients.pod.enqueue("anatomy-http", "sixteen-bytes-xx").await?;
            anyhow::ensure!(status == 201, "enqueue: {status} {body}");
        }
        Variant::HttpBlocking => {
            blocking_round(clients, 1).await?;
        }
        Variant::HttpHop => {
            let response = clients.pod.http().get(clients.pod.url("/healthz")).send().await?;
            anyhow::ensure!(response.status().is_success(), "healthz: {}", response.status());
            response.bytes().await?;
        }
    }
    Ok(())
}

/// `n` enqueues from the blocking client, on a thread of their own (not the runtime's), on
/// a new connection (the sidecar closes idle ones between rounds): their latencies.
async fn blocking_round(clients: &Clients, n: usize) -> Result<Vec<Duration>> {
    let mut http = BlockingHttp::connect(clients.sidecar)?;
    tokio::task::spawn_blocking(move || {
        let mut latencies = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            http.enqueue()?;
            latencies.push(t.elapsed());
        }
        Ok(latencies)
    })
    .await?
}

pub async fn anatomy(bench: &Bench, report: &mut Report) -> Result<()> {
    let leader = bench.ensemble.wait_for_leader(Duration::from_secs(30)).await?;
    let follower = (leader + 1) % bench.ensemble.len();
    let connect = bench.ensemble.address(follower).to_string();
    let options = SidecarOptions::new(&bench.sidecar_binary, connect.clone(), "bench-anatomy", NS);
    let sidecar = Sidecar::start(options).await?;
    let admin = bench.admin().await?;
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    admin.mkdir("/bench/anatomy/raw", &open).await?;
    admin.mkdir("/bench/anatomy/multi", &open).await?;
    for q in ["anatomy-lib", "anatomy-watched", "anatomy-http"] {
        provision::queue(&admin, NS, q, QueueConfig::default()).await?;
    }
    let watched = zk::Client::connect(&connect).await?;
    let mut watcher = watched.watch(&paths("anatomy-watched").base, zk::AddWatchMode::PersistentRecursive).await?;
    // Its events are read as the sidecar's config cache reads them.
    let watch = tokio::spawn(async move {
        loop {
            if watcher.changed().await.event_type == zk::EventType::Session {
                return;
            }
        }
    });
    let clients = Clients {
        plain: zk::Client::connect(&connect).await?,
        watched,
        watch,
        pod: PodClient::new(sidecar.url("")),
        sidecar: sidecar.addr,
        last_receipt: Default::default(),
    };
    // Warm every path once (buckets, connections, the sidecar's config cache).
    for variant in Variant::ALL {
        for _ in 0..20 {
            once(&clients, variant).await?;
        }
    }
    let rounds = bench.sizes.enqueue_rounds;
    let per_round = (bench.sizes.queue_items / rounds).max(10);
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); Variant::ALL.len()];
    let mut walls = vec![Duration::ZERO; Variant::ALL.len()];
    let mut requests = vec![0u64; Variant::ALL.len()];
    let mut curator = Curator::default();
    for _ in 0..rounds {
        if let Some(peers) = &bench.peers {
            super::settle().await;
            let f = peers.run("curator", &connect, &["queue-put", &per_round.to_string(), "1"]).await?;
            curator.add(&f);
        }
        for (v, &variant) in Variant::ALL.iter().enumerate() {
            super::settle().await;
            let before = bench.packets_received().await?;
            let start = Instant::now();
            if variant == Variant::HttpBlocking {
                latencies[v].extend(blocking_round(&clients, per_round).await?);
            } else {
                for _ in 0..per_round {
                    let t = Instant::now();
                    once(&clients, variant).await?;
                    latencies[v].push(t.elapsed());
                }
            }
            walls[v] += start.elapsed();
            // The receipts' deletes are awaited in the background: let them land.
            tokio::time::sleep(Duration::from_millis(100)).await;
            requests[v] += bench.packets_received().await?.saturating_sub(before);
        }
    }
    for (v, variant) in Variant::ALL.iter().enumerate() {
        let ops = latencies[v].len();
        let note = format!("{:.2} ZooKeeper requests per op, on a follower", requests[v] as f64 / ops as f64);
        let figure =
            Figure::from_latencies("enqueue parts", variant.name(), std::mem::take(&mut latencies[v]), walls[v]);
        report.push(figure.note(note));
    }
    if bench.peers.is_some() {
        report.push(curator.figure());
        report.ratio(
            "sidecar HTTP enqueue / curator put, single, same rounds (rate)",
            ("enqueue parts", Variant::Http.name()),
            ("enqueue parts", CURATOR),
            false,
            ">= 1",
        );
        report.ratio(
            "the same from a blocking client / curator put (rate)",
            ("enqueue parts", Variant::HttpBlocking.name()),
            ("enqueue parts", CURATOR),
            false,
            ">= 1",
        );
    }
    report.ratio(
        "sidecar HTTP enqueue / zookeeper create, single (rate)",
        ("enqueue parts", Variant::Http.name()),
        ("enqueue parts", Variant::Create.name()),
        false,
        ">= 1 (goal vs Curator's put)",
    );
    clients.watch.abort();
    Ok(())
}
