//! Configs of locks and queues, read once and kept until their znode changes: a data
//! watch drops the entry, so an acquire or a dequeue does not read its config from
//! ZooKeeper every time, and an operator's change is seen at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
        let (data, _, watcher) = match current.client.get_and_watch_data(path).await {
            Ok(found) => found,
            Err(zk::Error::NoNode) => return Err(CacheError::NoNode),
            Err(err) => return Err(CacheError::ZooKeeper(err)),
        };
        let value = parse(path, &data).map_err(CacheError::Invalid)?;
        self.entries.lock().expect("not poisoned").insert(path.to_owned(), (current.generation, value.clone()));
        let (entries, path, generation) = (self.entries.clone(), path.to_owned(), current.generation);
        tokio::spawn(async move {
            // Any change, deletion or session event: forget, the next use reads again.
            watcher.changed().await;
            let mut entries = entries.lock().expect("not poisoned");
            if entries.get(&path).is_some_and(|(g, _)| *g == generation) {
                entries.remove(&path);
            }
        });
        Ok(value)
    }
}
