//! Deduplicated enqueues: an item sent with an idempotency key is stored once per
//! deduplication window, however often its producer sends it again (after a lost reply,
//! a 503, a sidecar restart), and whichever sidecar it goes through.
//!
//! ```text
//! <queue>/keys/<key, base64url>   persistent with a TTL of the window; which item it made
//! ```
//!
//! Invariants:
//! - The record is created in the multi that creates its item, so there is never an
//!   item of a key without its record, nor a record without its item.
//! - A record older than the window is expired whatever the server's reaper has done
//!   yet (TTL nodes are removed at its next check): its replacement deletes it by version
//!   in the multi that creates the new item.
//! - A record names its item's id once the multi's reply gave it (a `setData` sent
//!   before the receipt's delete). Until then it names the receipt and the item's place
//!   after it, which a duplicate looks up instead; and when the first producer's session
//!   ended before either (the receipt went with it), the items its transaction made
//!   (same `czxid`) are found in the bucket.
//! - Two producers of one key at once: one multi creates the record, the other fails on
//!   it and reads it again, so it answers a duplicate.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::enqueue::{Also, Prepared, send};
use super::enqueue::{Made, Receipts};
use super::group::GroupKey;
use super::item::{ItemId, Place, now_ms};
use super::receipt::{self, Receipt, made_in_transaction};
use super::{NewItem, QueueError};
use crate::layout::QueuePaths;
use crate::retry::while_unknown;
use crate::zk;

/// Longest idempotency key, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// What an enqueue of one item did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The item's id; None only for a duplicate whose first producer's sidecar died
    /// between its enqueue and learning the id.
    pub id: Option<ItemId>,
    /// An item of the same key was already enqueued within the window: nothing was made.
    pub duplicate: bool,
}

/// A key's record, as stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// Until the id is known: the bucket, the call's receipt, and the item's place after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bucket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    receipt: Option<String>,
    #[serde(default)]
    index: u64,
    /// The item's group (node-name form), when it has one: the receipt and the item are
    /// in the group, `index` places it among the call's items there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
}

impl Record {
    /// Where the record's item was made, until its id is known.
    fn place(&self) -> Option<(Place, &str)> {
        let bucket = self.bucket.as_deref()?;
        let place = match self.group.as_deref() {
            Some(group) => Place::Group(GroupKey::from_encoded(group).ok()?),
            None => Place::Bucket(bucket.to_owned()),
        };
        Some((place, bucket))
    }
}

/// What reading a key found.
enum Seen {
    New,
    /// Within the window; with the transaction that made it (its items share it).
    Fresh(Record, i64),
    /// Past the window: replaced (by version) by this call's item.
    Expired(i32),
}

fn record_path(paths: &QueuePaths, key: &str) -> String {
    format!("{}/{}", paths.keys(), URL_SAFE_NO_PAD.encode(key.as_bytes()))
}

/// Enqueues `items`, each with its idempotency key or none, in one multi (all or none of
/// those that are not duplicates). A key seen within `window` makes nothing and answers
/// the first item's id; a key twice in one call makes one item.
pub async fn enqueue_deduplicated(
    client: &zk::Client,
    paths: &QueuePaths,
    items: &[NewItem],
    keys: &[Option<String>],
    window: Duration,
) -> Result<Vec<Enqueued>, QueueError> {
    let mut rounds = 0;
    loop {
        rounds += 1;
        let seen = read_keys(client, paths, keys, window).await?;
        // The first item of each new (or expired) key, and every item without a key.
        let mut first_of: HashMap<&str, usize> = HashMap::new();
        let mut fresh: Vec<usize> = Vec::new();
        for (index, key) in keys.iter().enumerate() {
            match key.as_deref() {
                None => fresh.push(index),
                Some(key) if matches!(seen[key], Seen::Fresh(..)) || first_of.contains_key(key) => {}
                Some(key) => {
                    first_of.insert(key, index);
                    fresh.push(index);
                }
            }
        }
        let made = if fresh.is_empty() {
            Vec::new()
        } else {
            let new_items: Vec<NewItem> = fresh.iter().map(|&i| items[i].clone()).collect();
            let mut prepared = Prepared::new(&new_items, Receipts::EachPlace);
            add_records(paths, &mut prepared, &fresh, keys, &seen, window);
            match send(client, paths, &prepared).await {
                Ok(made) => name_items(client, paths, &prepared, &fresh, keys, made),
                // Another producer of a key was faster: read the keys again.
                Err(QueueError::ZooKeeper(zk::Error::NodeExists | zk::Error::BadVersion)) if rounds < 5 => continue,
                Err(err) => return Err(err),
            }
        };
        let mut answers: Vec<Option<Enqueued>> = vec![None; items.len()];
        for (&index, id) in fresh.iter().zip(made) {
            answers[index] = Some(Enqueued { id, duplicate: false });
        }
        for (index, key) in keys.iter().enumerate() {
            if answers[index].is_some() {
                continue;
            }
            let key = key.as_deref().expect("only keyed items are left");
            let id = match (&seen[key], first_of.get(key)) {
                (_, Some(&first)) => answers[first].as_ref().and_then(|a| a.id.clone()),
                (Seen::Fresh(record, czxid), None) => resolve(client, paths, key, record, *czxid).await?,
                _ => None,
            };
            answers[index] = Some(Enqueued { id, duplicate: true });
        }
        return Ok(answers.into_iter().map(|a| a.expect("every item answered")).collect());
    }
}

/// The multi's record writes: for each new key, its record (replacing an expired one).
fn add_records(
    paths: &QueuePaths,
    prepared: &mut Prepared,
    fresh: &[usize],
    keys: &[Option<String>],
    seen: &HashMap<&str, Seen>,
    window: Duration,
) {
    for (position, &index) in fresh.iter().enumerate() {
        let Some(key) = keys[index].as_deref() else { continue };
        let path = record_path(paths, key);
        if let Seen::Expired(version) = seen[key] {
            prepared.also.push(Also::Delete { path: path.clone(), version });
        }
        let (index_of_place, index) = prepared.order[position];
        let placed = &prepared.places[index_of_place];
        let record = Record {
            id: None,
            bucket: Some(placed.items[index].0.clone()),
            receipt: Some(prepared.receipt.prefix().to_owned()),
            index: index as u64,
            group: match &placed.place {
                Place::Group(group) => Some(group.encoded().to_owned()),
                Place::Bucket(_) => None,
            },
        };
        let data = serde_json::to_vec(&record).expect("records serialize");
        prepared.also.push(Also::CreateWithTtl { path, data, ttl: window });
    }
}

/// Once the ids are known: each record is told its item's id, then the receipts go. The
/// writes are sent in that order on the session, and their replies awaited in the
/// background (a record left without its id is still resolved through its receipt).
fn name_items(
    client: &zk::Client,
    paths: &QueuePaths,
    prepared: &Prepared,
    fresh: &[usize],
    keys: &[Option<String>],
    made: Made,
) -> Vec<Option<ItemId>> {
    let ids = prepared.ids(&made);
    let named: Vec<_> = fresh
        .iter()
        .zip(&ids)
        .filter_map(|(&index, id)| {
            let (key, id) = (keys[index].as_deref()?, id.as_ref()?);
            let data =
                serde_json::to_vec(&Record { id: Some(id.to_string()), ..Record::default() }).expect("serializes");
            Some(client.set_data(&record_path(paths, key), &data, None))
        })
        .collect();
    receipt::delete(client, made.receipts);
    tokio::spawn(async move {
        for write in named {
            if let Err(err) = write.await {
                tracing::debug!(error = %err, "an idempotency record keeps its receipt's place instead of its id");
            }
        }
    });
    ids
}

/// Reads each distinct key's record (the reads go out together).
async fn read_keys<'k>(
    client: &zk::Client,
    paths: &QueuePaths,
    keys: &'k [Option<String>],
    window: Duration,
) -> Result<HashMap<&'k str, Seen>, QueueError> {
    let mut distinct: Vec<&str> = keys.iter().flatten().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let reads = distinct.iter().map(|key| {
        let path = record_path(paths, key);
        async move { while_unknown(client, "reading an idempotency key", |_| client.get_data(&path)).await }
    });
    let reads = futures::future::join_all(reads).await;
    let mut seen = HashMap::new();
    for (key, read) in distinct.into_iter().zip(reads) {
        let state = match read {
            Ok((data, stat)) => {
                let age_ms = (now_ms() as i64).saturating_sub(stat.mtime).max(0) as u128;
                if age_ms >= window.as_millis() {
                    Seen::Expired(stat.version)
                } else {
                    Seen::Fresh(serde_json::from_slice(&data).unwrap_or_default(), stat.czxid)
                }
            }
            // No record, or no `keys/` yet (made by the enqueue's multi on its NoNode).
            Err(zk::Error::NoNode) => Seen::New,
            Err(err) => return Err(err.into()),
        };
        seen.insert(key, state);
    }
    Ok(seen)
}

/// The id of the item a fresh record made: written in it; else found by its receipt
/// while the first producer has not named it yet; else (that producer's session ended
/// first) among the bucket's items made by the record's transaction. None when that item
/// was consumed and acked already.
async fn resolve(
    client: &zk::Client,
    paths: &QueuePaths,
    key: &str,
    record: &Record,
    czxid: i64,
) -> Result<Option<ItemId>, QueueError> {
    if let Some(id) = record.id.as_deref().and_then(|id| ItemId::parse(id).ok()) {
        return Ok(Some(id));
    }
    let (Some((place, bucket)), Some(prefix)) = (record.place(), &record.receipt) else { return Ok(None) };
    let deadline = tokio::time::Instant::now() + client.session_timeout();
    if let Some(found) = Receipt::named(prefix).find(client, paths, &place, deadline).await? {
        return Ok(Some(found.id(&place, bucket, record.index)));
    }
    // The receipt is deleted after the record was named: read the record once more.
    match client.get_data(&record_path(paths, key)).await {
        Ok((data, _)) => {
            let named: Record = serde_json::from_slice(&data).unwrap_or_default();
            if let Some(id) = named.id.as_deref().and_then(|id| ItemId::parse(id).ok()) {
                return Ok(Some(id));
            }
        }
        Err(zk::Error::NoNode) => return Ok(None),
        Err(err) => return Err(err.into()),
    }
    made_in_transaction(client, paths, &place, czxid, deadline)
        .await
        .map(|made| made.get(record.index as usize).cloned())
}
