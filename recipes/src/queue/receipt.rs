//! Receipts: how a write that creates items (an enqueue, a delayed nack's move, a requeue)
//! is told apart, after its reply was lost, from one that was never applied.
//!
//! A sequential item's name cannot be known before it is created, and a look for the item
//! itself cannot tell "never created" from "created, then taken and acked by a fast
//! consumer". So the multi that creates a bucket's items first creates, in that bucket,
//! an *ephemeral* sequential receipt `receipt-<call id>-<seq>` of this session. After an
//! unknown outcome the receipt is looked for by name: there, the multi was applied (it is
//! one transaction) and the items' ids are the receipt's next sequence numbers; not
//! there, it was not. Its owner deletes it once the outcome is known; one whose delete
//! fails dies with the session. Consumers (of every version) list only `item-` children.

use super::QueueError;
use super::item::ItemId;
use crate::identity::NodeAcl;
use crate::layout::QueuePaths;
use crate::retry::{outcome_unknown, while_unknown, while_unknown_until};
use crate::zk;

/// The receipts of one call: one name, used in each bucket the call writes to.
#[derive(Debug, Clone)]
pub(super) struct Receipt {
    prefix: String,
}

/// What a call's multi made in one bucket.
#[derive(Debug, Clone)]
pub(super) struct Receipted {
    /// The receipt's path, to delete.
    pub receipt: String,
    /// The id of the first item after the receipt (the call's other items in the bucket
    /// follow it).
    pub first: ItemId,
}

impl Receipt {
    pub fn new() -> Self {
        Self { prefix: format!("receipt-{}-", uuid::Uuid::new_v4().simple()) }
    }

    /// The receipts of a call whose name was written down (an idempotency record).
    pub fn named(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// The name shared by the call's receipts, less each one's sequence number.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The receipt's create, to add to a multi just before the bucket's items.
    pub fn create_in(&self, bucket_path: &str) -> String {
        format!("{bucket_path}/{}", self.prefix)
    }

    pub fn mode(acl: NodeAcl) -> zk::CreateOptions<'static> {
        zk::CreateMode::EphemeralSequential.with_acls(acl.acls())
    }

    /// From the created paths of a multi's receipt and its first item in `bucket`.
    pub fn made(bucket: &str, receipt: String, first_item: &str) -> Result<Receipted, zk::Error> {
        let first = first_item
            .rsplit('/')
            .next()
            .and_then(|node| ItemId::from_node(bucket, node))
            .ok_or_else(|| zk::Error::UnexpectedError(format!("an item created at {first_item}")))?;
        Ok(Receipted { receipt, first })
    }

    /// From the results of an applied multi that made one receipt in `bucket` and then
    /// the item(s) after it: the receipt and the first item.
    pub fn made_by(bucket: &str, results: Vec<zk::MultiWriteResult>) -> Result<Receipted, zk::Error> {
        let mut created = results.into_iter().filter_map(|result| match result {
            zk::MultiWriteResult::Create { path, .. } => Some(path),
            _ => None,
        });
        match (created.next(), created.next()) {
            (Some(receipt), Some(item)) => Self::made(bucket, receipt, &item),
            other => Err(zk::Error::UnexpectedError(format!("a multi with a receipt created {other:?}"))),
        }
    }

    /// After an unknown outcome: brings the server up to date (`sync`) and looks for this
    /// call's receipt in `bucket`, retrying lost connections until `deadline`. Some when
    /// the multi that made it was applied.
    pub async fn find(
        &self,
        client: &zk::Client,
        paths: &QueuePaths,
        bucket: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Receipted>, QueueError> {
        let bucket_path = paths.bucket(bucket);
        let seq = while_unknown_until(deadline, "looking for a receipt", |_| async {
            client.sync(&bucket_path).await?;
            match client.list_children(&bucket_path).await {
                Ok(nodes) => Ok(nodes.into_iter().find_map(|n| n.strip_prefix(&self.prefix).map(str::to_owned))),
                Err(zk::Error::NoNode) => Ok(None),
                Err(err) => Err(err),
            }
        })
        .await?;
        Ok(seq.and_then(|seq| {
            let id = ItemId::parse(&format!("{bucket}.{seq}")).ok()?;
            Some(Receipted { receipt: format!("{bucket_path}/{}{seq}", self.prefix), first: id.plus(1) })
        }))
    }
}

/// Deletes a call's receipts once its outcome is known. The deletes are sent before the
/// call returns, so this session's next request (a `stats`, say) comes after them, but
/// their replies are awaited in the background: no round trip is added to the call. A
/// receipt whose delete fails is left to die with the session; until then a bucket's
/// child count includes it.
pub(super) fn delete(client: &zk::Client, receipts: Vec<String>) {
    let sent: Vec<_> = receipts.iter().map(|receipt| client.delete(receipt, None)).collect();
    let client = client.clone();
    tokio::spawn(async move {
        for (receipt, delete) in receipts.iter().zip(sent) {
            let result = match delete.await {
                Err(err) if outcome_unknown(&err) => {
                    while_unknown(&client, "deleting a receipt", |_| client.delete(receipt, None)).await
                }
                result => result,
            };
            match result {
                Ok(()) | Err(zk::Error::NoNode) => {}
                Err(err) => tracing::debug!(receipt, error = %err, "a receipt is left to its session"),
            }
        }
    });
}
