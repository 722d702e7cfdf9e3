//! What an app does with the items it holds: ack (one, or many in as few transactions as
//! can be), nack. The delivery leaves `held` first; a failed settle puts it back.

use std::time::Duration;

use paddock_recipes::Name;
use paddock_recipes::queue::item::ItemId;
use paddock_recipes::queue::{self, NackOutcome};

use super::{QueueService, QueueServiceError};
use crate::metrics::queue_label;

impl QueueService {
    /// Acks several items in as few transactions as it can, with an answer per item.
    pub async fn ack_many(&self, queue: &Name, ids: &[ItemId]) -> Vec<Result<(), QueueServiceError>> {
        let mut answers: Vec<Option<Result<(), QueueServiceError>>> = Vec::with_capacity(ids.len());
        // Not connected after the grace: `take_held` answers each id with the session's error.
        let _ = self.current().await;
        let mut taken = Vec::new();
        for id in ids {
            match self.take_held(queue, id) {
                Ok((client, held)) => {
                    taken.push((answers.len(), client, held));
                    answers.push(None);
                }
                Err(err) => answers.push(Some(Err(err))),
            }
        }
        if let Some((_, client, _)) = taken.first() {
            let acking: Vec<ItemId> = taken.iter().map(|(index, _, _)| ids[*index].clone()).collect();
            let acked = queue::ack_many(client, &self.paths(queue), &acking).await;
            let counter = self.inner.ctx.metrics.queue_acked.get_or_create(&queue_label(queue.as_str())).clone();
            for ((index, _, held), result) in taken.into_iter().zip(acked) {
                match &result {
                    Ok(()) => drop(counter.inc()),
                    Err(_) => self.put_back(queue, &ids[index], held),
                }
                answers[index] = Some(result.map_err(QueueServiceError::from));
            }
        }
        answers.into_iter().map(|a| a.expect("every id answered")).collect()
    }

    pub async fn ack(&self, queue: &Name, id: &ItemId) -> Result<(), QueueServiceError> {
        self.current().await?;
        let (client, held) = self.take_held(queue, id)?;
        match queue::ack(&client, &self.paths(queue), id).await {
            Ok(()) => {
                self.inner.ctx.metrics.queue_acked.get_or_create(&queue_label(queue.as_str())).inc();
                Ok(())
            }
            Err(err) => {
                self.put_back(queue, id, held);
                Err(err.into())
            }
        }
    }

    pub async fn nack(
        &self,
        queue: &Name,
        id: &ItemId,
        delay: Option<Duration>,
        reason: Option<&str>,
    ) -> Result<NackOutcome, QueueServiceError> {
        let config = self.config(queue).await?;
        let (client, held) = self.take_held(queue, id)?;
        match queue::nack(&client, &self.paths(queue), &config, id, delay, reason).await {
            Ok(outcome) => {
                let label = queue_label(queue.as_str());
                self.inner.ctx.metrics.queue_nacked.get_or_create(&label).inc();
                if outcome == NackOutcome::DeadLettered {
                    self.inner.ctx.metrics.queue_dead_lettered.get_or_create(&label).inc();
                }
                Ok(outcome)
            }
            Err(err) => {
                self.put_back(queue, id, held);
                Err(err.into())
            }
        }
    }
}
