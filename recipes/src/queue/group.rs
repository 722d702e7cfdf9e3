//! Groups: ordered sub-queues of one queue, for items that must run one at a time and in
//! enqueue order (one customer's, one account's, one document's), while different
//! groups run in parallel.
//!
//! ```text
//! <queue>/groups/<key>/<bucket>-<seq>   an item of group <key> (persistent sequential)
//! <queue>/groups/<key>/receipt-...      an enqueue's receipt (see `receipt`)
//! ```
//!
//! A group is a node named by its key (URL-safe base64, so any key of up to
//! [`MAX_GROUP_KEY_BYTES`] bytes is a node name). Its items' sequence numbers, the
//! group's own, are the enqueue order; the name's bucket prefix (priority and due time)
//! places the group's head among other groups' heads and ungrouped items.
//!
//! Invariants:
//! - Only a group's head (its item with the lowest sequence) is ever claimed. Items leave
//!   a group only from its head (ack, dead-lettering), and a new item always gets a higher
//!   sequence, so an item that was the head in any correct listing is the head until it
//!   leaves: a claim of a stale view's head fails because the item is gone, never hands
//!   out an item behind another.
//! - So at most one item of a group is in flight, decided by ZooKeeper whatever a view
//!   says: the head's `claims/<id>` (an ephemeral create, which fails while anyone holds
//!   it) is the group's one claim. An item behind the head can be in a view only with the
//!   head (a listing is one snapshot, and an item is listed after every item made before
//!   it or not at all), and after the head left it is the head.
//! - A nacked or timed-out item stays where it is: the head. A nack's back-off keeps the
//!   claim until the delay has passed (the group waits with it); the consumer's death
//!   ends the wait early.
//! - A group node made again starts its sequence over, and an id is its bucket (the due
//!   time's 100 ms slot) and sequence: so a group is removed (by the consumers' views)
//!   only once it has been empty, and its items' due times past, for
//!   [`super::view::BUCKET_KEEP`]. A new item is then due in a later slot than any item
//!   the old node held, and ids never repeat. (A container node, which the server removes
//!   as soon as it finds it empty, gave a new item the id of one acked 10 ms before: the
//!   test `a_grouped_id_is_never_given_to_a_second_item_after_its_group_is_removed`.)

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Longest group key, in bytes.
pub const MAX_GROUP_KEY_BYTES: usize = 128;

/// A group's key, kept in its node-name form (URL-safe base64 of the key's bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupKeyError {
    #[error("a group key is 1 to {MAX_GROUP_KEY_BYTES} bytes; this one is {0} bytes")]
    Length(usize),
    #[error("invalid group in an item id")]
    Encoding,
}

impl GroupKey {
    /// From the key as the app gives it.
    pub fn new(key: &str) -> Result<Self, GroupKeyError> {
        if key.is_empty() || key.len() > MAX_GROUP_KEY_BYTES {
            return Err(GroupKeyError::Length(key.len()));
        }
        Ok(Self(URL_SAFE_NO_PAD.encode(key.as_bytes())))
    }

    /// From the node-name form (a znode name or an item id's part); checks that it decodes
    /// to a key of a valid length.
    pub fn from_encoded(encoded: &str) -> Result<Self, GroupKeyError> {
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| GroupKeyError::Encoding)?;
        if bytes.is_empty() || bytes.len() > MAX_GROUP_KEY_BYTES || URL_SAFE_NO_PAD.encode(&bytes) != encoded {
            return Err(GroupKeyError::Encoding);
        }
        Ok(Self(encoded.to_owned()))
    }

    /// Sorts before every key (a bound for ranges, never a group's key).
    pub fn lowest() -> Self {
        Self(String::new())
    }

    /// The node-name form.
    pub fn encoded(&self) -> &str {
        &self.0
    }

    /// The key as the app gave it (lossy for keys that were not UTF-8, which the API
    /// does not accept).
    pub fn key(&self) -> String {
        let bytes = URL_SAFE_NO_PAD.decode(&self.0).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl fmt::Display for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_lengths_are_checked() {
        let key = GroupKey::new("customer/42 ü").unwrap();
        assert!(key.encoded().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(key.key(), "customer/42 ü");
        assert_eq!(GroupKey::from_encoded(key.encoded()).unwrap(), key);
        assert_eq!(GroupKey::new(""), Err(GroupKeyError::Length(0)));
        assert!(GroupKey::new(&"x".repeat(128)).is_ok());
        assert_eq!(GroupKey::new(&"x".repeat(129)), Err(GroupKeyError::Length(129)));
        for bad in ["", "a/b", "..", "YQ=", "+/"] {
            assert!(GroupKey::from_encoded(bad).is_err(), "{bad}");
        }
    }
}
