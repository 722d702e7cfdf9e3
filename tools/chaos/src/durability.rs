//! ZooKeeper's own durability, checked beside Paddock's: does the ensemble keep every
//! write it confirmed, through the same faults?
//!
//! A plain client (no Paddock, straight to the servers) creates numbered znodes under
//! [`ROOT`] one after another, and deletes each one [`KEEP`] writes later, writing down
//! every write whose reply confirmed it. A write whose outcome is unknown (the reply was
//! lost) is written down as such, and its node is left out of the checks. Two checks:
//!
//! - a confirmed create is there: its delete must not answer `NoNode` (checked as the run
//!   goes), and the creates not yet deleted at the end must exist;
//! - a confirmed delete stays done: at the end no deleted node is there again.
//!
//! When ZooKeeper itself rolls back committed transactions (as 3.8.0 can when every server
//! crashes shortly after a follower resynced: ZOOKEEPER-4646, -4643, -4685, -4785), these
//! checks see it, and a Paddock violation at the same moment is explained by it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use super::cluster::ZkAccess;
use anyhow::{Context, Result};
use paddock_recipes::retry::outcome_unknown;
use paddock_recipes::zk;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Where the ledger writes (outside `/paddock`, which the operator owns).
pub const ROOT: &str = "/chaos-durability";
/// A node is deleted this many writes after its create: a rollback of a few seconds'
/// worth of creates shows as deletes answered `NoNode` after the restart.
const KEEP: usize = 100;
/// The writer's pause between writes: about 200 writes a second, a load beside the pods'.
const PAUSE: Duration = Duration::from_millis(5);
/// The writer's session: long enough to outlive a stopped ensemble (20 s).
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the writer wrote, and what the checks found.
#[derive(Debug, Default)]
pub struct DurabilityLedger {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Node number -> when its create was confirmed (not yet deleted).
    created: BTreeMap<u64, Instant>,
    /// Node numbers whose delete was confirmed, and when.
    deleted: BTreeMap<u64, Instant>,
    /// Writes whose reply was lost: their nodes are left out of the checks.
    unknown: u64,
    /// Confirmed creates found missing, with when they were confirmed.
    lost_creates: Vec<(u64, Instant)>,
    /// The writer's sabotage under [`Sabotage::UndoSome`]: how many writes it undid.
    undone_on_purpose: u64,
}

/// The broken variant's saboteur: it undoes some confirmed writes behind the ledger's
/// back, as a server that lost committed transactions would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// Every 50th confirmed create is deleted, and every 70th confirmed delete is created
    /// again, by the writer itself, without writing it down.
    UndoSome,
}

/// What the checks found, for the report.
#[derive(Debug, Default)]
pub struct Durability {
    pub creates_confirmed: u64,
    pub deletes_confirmed: u64,
    pub unknown: u64,
    /// Confirmed creates that were not there (node number, seconds into the run).
    pub lost_creates: Vec<(u64, f64)>,
    /// Confirmed deletes whose node was there again at the end.
    pub undone_deletes: Vec<(u64, f64)>,
    /// The broken variant's count of what it undid.
    pub undone_on_purpose: u64,
}

impl Durability {
    pub fn writes_lost(&self) -> usize {
        self.lost_creates.len() + self.undone_deletes.len()
    }
}

impl DurabilityLedger {
    /// Writes until `stop`, reconnecting as needed (a new session after an expired one).
    pub async fn write(&self, zk: ZkAccess, sabotage: Sabotage, stop: CancellationToken) {
        let mut next = 0u64;
        let mut live: VecDeque<u64> = VecDeque::new();
        while !stop.is_cancelled() {
            let client = tokio::select! {
                _ = stop.cancelled() => return,
                client = connect(&zk) => client,
            };
            let Ok(client) = client else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            if let Err(err) = ensure_root(&client).await {
                tracing::debug!(%err, "durability ledger: making its root");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            while !stop.is_cancelled() {
                let number = next;
                next += 1;
                match create(&client, number).await {
                    Ok(()) => {
                        self.state.lock().unwrap().created.insert(number, Instant::now());
                        live.push_back(number);
                        if sabotage == Sabotage::UndoSome
                            && number.is_multiple_of(50)
                            && client.delete(&node(number), None).await.is_ok()
                        {
                            self.state.lock().unwrap().undone_on_purpose += 1;
                        }
                    }
                    Err(err) if outcome_unknown(&err) => self.state.lock().unwrap().unknown += 1,
                    Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => break,
                    Err(err) => tracing::warn!(%err, number, "durability ledger: create failed"),
                }
                if live.len() > KEEP {
                    let old = live.pop_front().expect("longer than KEEP");
                    if !self.delete(&client, old, sabotage).await {
                        break;
                    }
                }
                tokio::time::sleep(PAUSE).await;
            }
        }
    }

    /// Deletes a node whose create was confirmed; false when the session is gone.
    async fn delete(&self, client: &zk::Client, number: u64, sabotage: Sabotage) -> bool {
        let result = client.delete(&node(number), None).await;
        let applied = result.is_ok();
        {
            let mut state = self.state.lock().unwrap();
            let confirmed_at = state.created.remove(&number).expect("only confirmed creates are deleted");
            match result {
                Ok(()) => {
                    state.deleted.insert(number, Instant::now());
                }
                Err(zk::Error::NoNode) => state.lost_creates.push((number, confirmed_at)),
                Err(err) if outcome_unknown(&err) => state.unknown += 1,
                Err(zk::Error::SessionExpired | zk::Error::ClientClosed) => {
                    // Not applied: the create is still confirmed, and checked at the end.
                    state.created.insert(number, confirmed_at);
                    return false;
                }
                Err(err) => tracing::warn!(%err, number, "durability ledger: delete failed"),
            }
        }
        if applied
            && sabotage == Sabotage::UndoSome
            && number.is_multiple_of(70)
            && create(client, number).await.is_ok()
        {
            self.state.lock().unwrap().undone_on_purpose += 1;
        }
        true
    }

    /// The checks at the end: every confirmed create not deleted is there, no confirmed
    /// delete is undone. `started` is the run's start, for the report's times.
    pub async fn check(&self, zk: &ZkAccess, started: Instant) -> Result<Durability> {
        let client = connect(zk).await.context("connecting to check the durability ledger")?;
        let present: BTreeSet<u64> = client
            .list_children(ROOT)
            .await
            .context("listing the durability ledger")?
            .iter()
            .filter_map(|name| name.strip_prefix("n-")?.parse().ok())
            .collect();
        let state = self.state.lock().unwrap();
        let at = |when: &Instant| (*when - started).as_secs_f64();
        let mut lost_creates: Vec<(u64, f64)> = state.lost_creates.iter().map(|(n, when)| (*n, at(when))).collect();
        lost_creates.extend(state.created.iter().filter(|(n, _)| !present.contains(n)).map(|(n, when)| (*n, at(when))));
        lost_creates.sort_by_key(|(n, _)| *n);
        let undone_deletes = state.deleted.iter().filter(|(n, _)| present.contains(n)).map(|(n, when)| (*n, at(when)));
        Ok(Durability {
            creates_confirmed: (state.created.len() + state.deleted.len() + state.lost_creates.len()) as u64,
            deletes_confirmed: state.deleted.len() as u64,
            unknown: state.unknown,
            lost_creates,
            undone_deletes: undone_deletes.collect(),
            undone_on_purpose: state.undone_on_purpose,
        })
    }
}

async fn create(client: &zk::Client, number: u64) -> Result<(), zk::Error> {
    client.create(&node(number), &number.to_be_bytes(), &persistent()).await.map(|_| ())
}

fn node(number: u64) -> String {
    format!("{ROOT}/n-{number:012}")
}

fn persistent() -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())
}

async fn connect(access: &ZkAccess) -> Result<zk::Client, zk::Error> {
    access.connect(zk::Client::connector().with_session_timeout(SESSION_TIMEOUT)).await
}

async fn ensure_root(client: &zk::Client) -> Result<(), zk::Error> {
    match client.create(ROOT, b"", &persistent()).await {
        Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
        Err(err) => Err(err),
    }
}
