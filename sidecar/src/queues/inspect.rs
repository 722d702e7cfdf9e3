//! Peek and purge for the people who run a queue (`GET`/`DELETE /queue/{name}/items`,
//! `DELETE /queue/{name}/dead`): straight to ZooKeeper, whatever this pod consumes.

use paddock_recipes::Name;
use paddock_recipes::queue::{self, Peeked, Purged};

use super::{QueueService, QueueServiceError};
use crate::metrics::queue_label;

impl QueueService {
    pub async fn peek(&self, queue: &Name, limit: usize, with_payload: bool) -> Result<Vec<Peeked>, QueueServiceError> {
        let client = self.inner.ctx.session.client()?.client;
        Ok(queue::peek(&client, &self.paths(queue), limit, with_payload).await?)
    }

    pub async fn purge(&self, queue: &Name) -> Result<Purged, QueueServiceError> {
        let client = self.inner.ctx.session.client()?.client;
        let purged = queue::purge(&client, &self.paths(queue)).await?;
        self.inner.ctx.metrics.queue_purged.get_or_create(&queue_label(queue.as_str())).inc_by(purged.removed);
        tracing::info!(queue = %queue, removed = purged.removed, left_in_flight = purged.in_flight, "queue purged");
        Ok(purged)
    }

    pub async fn purge_dead(&self, queue: &Name) -> Result<u64, QueueServiceError> {
        let client = self.inner.ctx.session.client()?.client;
        let removed = queue::purge_dead(&client, &self.paths(queue)).await?;
        tracing::info!(queue = %queue, removed, "dead letters purged");
        Ok(removed)
    }
}
