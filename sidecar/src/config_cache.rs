//! Configs of locks and queues, read once and kept until their znode changes, so an
//! acquire or a dequeue does not read its config from ZooKeeper every time, and an
//! operator's change is seen at once.
//!
//! The entry is guarded by a persistent recursive watch on the znode, never by a one-shot
//! data watch: the lock's holders and the queue's view follow the same znode with a
//! recursive watch, and ZooKeeper before 3.9 keeps one watch mode per path and session
//! (ZOOKEEPER-4466): a data watch there would replace the recursive one and, once fired,
//! leave the session watching nothing. Watches of the same mode share one server watch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use paddock_recipes::retry::while_unknown;
use paddock_recipes::session::Current;
use paddock_recipes::zk;

#[derive(Debug)]
pub enum CacheError<E> {
    /// The znode does not exist (nothing provisions it).
    NoNode,
    /// Its data is not a valid config.
    Invalid(E),
    ZooKeeper(zk::Error),
}

/// Cached values by znode path, each tagged with the session generation whose watch
/// guards it (a new session re-reads).
pub struct ConfigCache<T> {
    entries: Arc<Mutex<HashMap<String, (u64, T)>>>,
}

impl<T> Default for ConfigCache<T> {
    fn default() -> Self {
        Self { entries: Arc::default() }
    }
}

impl<T: Clone + Send + 'static> ConfigCache<T> {
    pub async fn get<E>(
        &self,
        current: &Current,
        path: &str,
        parse: impl Fn(&str, &[u8]) -> Result<T, E>,
    ) -> Result<T, CacheError<E>> {
        if let Some((generation, value)) = self.entries.lock().expect("not poisoned").get(path)
            && *generation == current.generation
        {
            return Ok(value.clone());
        }
        // Watch first, then read: a change after the read is an event on the watch. An
        // entry is forgotten when the connection drops, so this read often comes while the
        // session moves to another server: it is retried until the session is back.
        let client = &current.client;
        let read = while_unknown(client, "reading a config", |_| async {
            let watcher = client.watch(path, zk::AddWatchMode::PersistentRecursive).await?;
            let (data, _) = client.get_data(path).await?;
            Ok::<_, zk::Error>((watcher, data))
        });
        let (mut watcher, data) = match read.await {
            Ok(read) => read,
            Err(zk::Error::NoNode) => return Err(CacheError::NoNode),
            Err(err) => return Err(CacheError::ZooKeeper(err)),
        };
        let value = parse(path, &data).map_err(CacheError::Invalid)?;
        self.entries.lock().expect("not poisoned").insert(path.to_owned(), (current.generation, value.clone()));
        let (entries, path, generation) = (self.entries.clone(), path.to_owned(), current.generation);
        tokio::spawn(async move {
            // The znode's data changed or it went, or the connection dropped (events may
            // have been missed meanwhile): forget, the next use reads again. Events below
            // the znode (contenders, items) are not ours.
            loop {
                let event = watcher.changed().await;
                let ours = match event.event_type {
                    zk::EventType::Session => true,
                    zk::EventType::NodeDataChanged | zk::EventType::NodeDeleted => event.path == path,
                    _ => false,
                };
                if ours {
                    break;
                }
            }
            let mut entries = entries.lock().expect("not poisoned");
            if entries.get(&path).is_some_and(|(g, _)| *g == generation) {
                entries.remove(&path);
            }
        });
        Ok(value)
    }
}
