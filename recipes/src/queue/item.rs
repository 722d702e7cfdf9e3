//! Item identity and encoding.
//!
//! An item lives at `items/<bucket>/item-<seq>`. The bucket name orders items by priority
//! (higher first) and due time (earlier first); the sequence orders items of one bucket by
//! arrival. A bucket spans [`BUCKET_SPAN_MS`] of due time, so a bucket holds what is
//! enqueued in that span — bounded by ZooKeeper's own write rate far below what would
//! bring a child list near jute.maxbuffer — and `items/` holds one child per span that has
//! items.
//!
//! The item id `<bucket>.<seq>` names the item everywhere else (`claims/<id>`,
//! `attempts/<id>`, `dead/<id>`) and in the HTTP API; [`ItemId::parse`] accepts nothing
//! that could reach another znode. An id must never name a second item, but a bucket's
//! sequence numbers start over if its znode is removed and made again; so a bucket is
//! removed only when nothing can still write to it: empty, and its slot
//! [`super::view::BUCKET_KEEP`] in the past (the consumers' views remove it).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::group::GroupKey;
use crate::layout::QueuePaths;

/// Due time granularity of buckets.
pub const BUCKET_SPAN_MS: u64 = 100;
/// Highest priority; priorities are 0 (default) to 9, higher first.
pub const MAX_PRIORITY: u8 = 9;
/// Largest payload with its envelope in one znode (ZooKeeper's jute.maxbuffer is 1 MiB;
/// the rest is room for the envelope and the request around it).
pub const MAX_PAYLOAD_BYTES: usize = 1_000_000;

/// Bucket of an item: `b<rank>-<slot>`, rank = 9 - priority, slot = due ms / span.
pub fn bucket_name(priority: u8, due_ms: u64) -> String {
    format!("b{}-{:012}", MAX_PRIORITY - priority.min(MAX_PRIORITY), due_ms / BUCKET_SPAN_MS)
}

/// When an item delayed by `delay` from `now_ms` is due: at least that late, and at the
/// start of a bucket's slot, because consumers take a bucket as due when its slot starts.
/// No delay is due now.
pub fn due_after(now_ms: u64, delay: std::time::Duration) -> u64 {
    if delay.is_zero() {
        return now_ms;
    }
    (now_ms + delay.as_millis() as u64).div_ceil(BUCKET_SPAN_MS) * BUCKET_SPAN_MS
}

/// Parses a bucket name into (priority, earliest due ms of the bucket).
pub fn parse_bucket(name: &str) -> Option<(u8, u64)> {
    let rest = name.strip_prefix('b')?;
    let (rank, slot) = rest.split_once('-')?;
    if rank.len() != 1 || slot.len() != 12 || !slot.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rank: u8 = rank.parse().ok()?;
    Some((MAX_PRIORITY.checked_sub(rank)?, slot.parse::<u64>().ok()? * BUCKET_SPAN_MS))
}

/// An item's id: its bucket, its sequence (in the bucket, or in its group), and its
/// group if it has one. Ungrouped items order as the queue does.
///
/// As text: `<bucket>.<seq>`, or `<bucket>.<seq>.<group>` with the group's node-name form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemId {
    pub bucket: String,
    pub seq: String,
    pub group: Option<GroupKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid item id {0:?}: expected <bucket>.<sequence>[.<group>] as returned by enqueue, e.g. b9-017329000001.0000000042"
)]
pub struct ItemIdError(pub String);

/// Where items are stored: a bucket of `items/`, or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Place {
    Bucket(String),
    Group(GroupKey),
}

impl Place {
    /// The node the items are children of.
    pub fn dir(&self, paths: &QueuePaths) -> String {
        match self {
            Place::Bucket(bucket) => paths.bucket(bucket),
            Place::Group(group) => paths.group(group.encoded()),
        }
    }

    /// The name of an item of `bucket` here, less its sequence number.
    pub fn item_prefix(&self, bucket: &str) -> String {
        match self {
            Place::Bucket(_) => "item-".to_owned(),
            Place::Group(_) => format!("{bucket}-"),
        }
    }

    /// The id of the item of `bucket` with sequence `seq` here.
    pub fn id(&self, bucket: &str, seq: u64) -> ItemId {
        let group = match self {
            Place::Bucket(_) => None,
            Place::Group(group) => Some(group.clone()),
        };
        ItemId { bucket: bucket.to_owned(), seq: format!("{seq:010}"), group }
    }

    /// The id of a child node of this place; None for receipts, claims, foreign nodes.
    pub fn id_of_node(&self, node: &str) -> Option<ItemId> {
        match self {
            Place::Bucket(bucket) => ItemId::from_node(bucket, node),
            Place::Group(group) => {
                let (bucket, seq) = node.rsplit_once('-')?;
                let id = ItemId::parse(&format!("{bucket}.{seq}")).ok()?;
                Some(ItemId { group: Some(group.clone()), ..id })
            }
        }
    }
}

impl ItemId {
    pub fn parse(id: &str) -> Result<Self, ItemIdError> {
        let err = || ItemIdError(id.chars().take(80).collect());
        let mut parts = id.splitn(3, '.');
        let (bucket, seq) = (parts.next().ok_or_else(err)?, parts.next().ok_or_else(err)?);
        if parse_bucket(bucket).is_none() || seq.len() != 10 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let group = parts.next().map(|g| GroupKey::from_encoded(g).map_err(|_| err())).transpose()?;
        Ok(Self { bucket: bucket.to_owned(), seq: seq.to_owned(), group })
    }

    /// From a bucket and a child node name `item-<seq>`.
    pub fn from_node(bucket: &str, node: &str) -> Option<Self> {
        let seq = node.strip_prefix("item-")?;
        Self::parse(&format!("{bucket}.{seq}")).ok().filter(|id| id.group.is_none())
    }

    /// Where the item is stored.
    pub fn place(&self) -> Place {
        match &self.group {
            None => Place::Bucket(self.bucket.clone()),
            Some(group) => Place::Group(group.clone()),
        }
    }

    /// The item's node.
    pub fn path(&self, paths: &QueuePaths) -> String {
        format!("{}/{}", self.place().dir(paths), self.node_name())
    }

    /// The sequence number.
    pub fn seq_number(&self) -> u64 {
        self.seq.parse().unwrap_or_default()
    }

    /// The id `n` sequence numbers further in the same bucket (the items one multi made
    /// there follow each other).
    pub fn plus(&self, n: u64) -> Self {
        Self { seq: format!("{:010}", self.seq_number() + n), ..self.clone() }
    }

    pub fn node_name(&self) -> String {
        format!("{}{}", self.place().item_prefix(&self.bucket), self.seq)
    }

    /// (priority, due ms) from the bucket.
    pub fn priority_and_due(&self) -> (u8, u64) {
        parse_bucket(&self.bucket).expect("validated at construction")
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.bucket, self.seq)?;
        match &self.group {
            Some(group) => write!(f, ".{}", group.encoded()),
            None => Ok(()),
        }
    }
}

/// What is stored with a payload: one JSON line, then the payload bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub enqueued_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default)]
    pub priority: u8,
    pub due_ms: u64,
    /// The id an item had before a delayed nack moved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_id: Option<String>,
    /// Delivery history carried by an item that a delayed nack moved (its `attempts/<id>`
    /// stays behind with the old id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried: Option<Attempts>,
    /// The item's group (as the app gave it), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Stored form of an item: its envelope as one line of JSON, then the payload as is.
pub fn encode(envelope: &Envelope, payload: &[u8]) -> Vec<u8> {
    with_header(envelope, payload)
}

/// Splits stored data into envelope and payload; None when it is not a Paddock item.
pub fn decode(data: &[u8]) -> Option<(Envelope, &[u8])> {
    split_header(data)
}

/// Stored form of a dead letter (`dead/<id>`): the letter as one line of JSON, then the
/// payload as is.
pub fn encode_dead(letter: &DeadLetter, payload: &[u8]) -> Vec<u8> {
    with_header(letter, payload)
}

/// Splits a stored dead letter into letter and payload; None when it is not Paddock's.
pub fn decode_dead(data: &[u8]) -> Option<(DeadLetter, &[u8])> {
    split_header(data)
}

fn with_header(header: &impl Serialize, payload: &[u8]) -> Vec<u8> {
    let mut data = serde_json::to_vec(header).expect("a header serializes");
    data.push(b'\n');
    data.extend_from_slice(payload);
    data
}

fn split_header<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<(T, &[u8])> {
    let newline = data.iter().position(|b| *b == b'\n')?;
    let header = serde_json::from_slice(&data[..newline]).ok()?;
    Some((header, &data[newline + 1..]))
}

/// Delivery history of an item, kept in `attempts/<id>` while it is in the queue and
/// moved with it to `dead/` when it is dead-lettered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempts {
    /// Deliveries so far.
    pub attempt: u32,
    /// The most recent deliveries (at most [`Attempts::KEPT`]).
    #[serde(default)]
    pub deliveries: Vec<DeliveryRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    pub attempt: u32,
    pub pod: String,
    pub at_ms: u64,
    /// `nack`, or absent while unknown (in flight, or its consumer vanished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl Attempts {
    pub const KEPT: usize = 20;

    pub fn record(&mut self, pod: &str, at_ms: u64) {
        self.attempt += 1;
        self.deliveries.push(DeliveryRecord { attempt: self.attempt, pod: pod.to_owned(), at_ms, outcome: None });
        if self.deliveries.len() > Self::KEPT {
            self.deliveries.remove(0);
        }
    }
}

/// A dead-lettered item: everything needed to inspect it and to requeue it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub envelope: Envelope,
    pub attempts: Attempts,
    pub dead_at_ms: u64,
    pub reason: String,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_delayed_item_is_due_at_a_slot_start_no_sooner_than_its_delay() {
        use std::time::Duration;
        assert_eq!(due_after(1_234, Duration::ZERO), 1_234);
        assert_eq!(due_after(1_234, Duration::from_millis(500)), 1_800);
        assert_eq!(due_after(1_200, Duration::from_millis(500)), 1_700);
        let due = due_after(1_234, Duration::from_millis(1));
        assert_eq!(parse_bucket(&bucket_name(0, due)).map(|(_, start)| start), Some(due));
    }
    use super::*;

    #[test]
    fn bucket_order_is_priority_then_due_time() {
        let urgent_late = bucket_name(9, 5_000);
        let normal_early = bucket_name(0, 1_000);
        let normal_late = bucket_name(0, 2_000);
        assert!(urgent_late < normal_early);
        assert!(normal_early < normal_late);
        assert_eq!(parse_bucket(&normal_late), Some((0, 2_000)));
    }

    #[test]
    fn ids_round_trip_and_reject_tricks() {
        let id = ItemId::from_node(&bucket_name(3, 1_732_900_000_123), "item-0000000042").unwrap();
        assert_eq!(ItemId::parse(&id.to_string()).unwrap(), id);
        assert_eq!(id.priority_and_due(), (3, 1_732_900_000_100));
        let place = Place::Group(GroupKey::new("customer-7").unwrap());
        let grouped = place.id(&bucket_name(3, 1_732_900_000_123), 42);
        assert_eq!(ItemId::parse(&grouped.to_string()).unwrap(), grouped);
        assert_eq!(place.id_of_node(&grouped.node_name()), Some(grouped.clone()));
        assert_eq!(place.id_of_node("claim"), None);
        assert_eq!(place.id_of_node("receipt-abc-0000000001"), None);
        for bad in [
            "",
            "x",
            "b9-000000000001",
            "b9-000000000001.42",
            "b9-000000000001.0000000042/..",
            "../b9",
            "b10-000000000001.0000000001",
            "bX-000000000001.0000000001",
            "b9-000000000001.0000000001.",
            "b9-000000000001.0000000001.a/b",
            "b9-000000000001.0000000001.YQ.x",
        ] {
            assert!(ItemId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn envelope_and_binary_payload_round_trip() {
        let env = Envelope {
            enqueued_at_ms: 1,
            content_type: Some("application/octet-stream".into()),
            priority: 2,
            due_ms: 3,
            original_id: None,
            carried: None,
            group: Some("g".into()),
        };
        let payload = [0u8, b'\n', 255, 10];
        let data = encode(&env, &payload);
        let (decoded, body) = decode(&data).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(body, payload);

        let letter = DeadLetter { envelope: env, attempts: Attempts::default(), dead_at_ms: 4, reason: "why".into() };
        let data = encode_dead(&letter, &payload);
        let (decoded, body) = decode_dead(&data).unwrap();
        assert_eq!((decoded, body), (letter, &payload[..]));
        assert!(decode_dead(b"not json\npayload").is_none());
    }

    #[test]
    fn history_keeps_the_latest_deliveries() {
        let mut a = Attempts::default();
        for i in 0..25 {
            a.record("pod", i);
        }
        assert_eq!(a.attempt, 25);
        assert_eq!(a.deliveries.len(), Attempts::KEPT);
        assert_eq!(a.deliveries.last().unwrap().attempt, 25);
    }
}
