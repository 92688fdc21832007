//! Pinned searchers for cursors.
//!
//! A first page is answered from the current searcher; when it has a next page, that
//! searcher is kept here under a snapshot id, and the cursor names it. Later pages search
//! the same snapshot, so documents committed meanwhile neither shift nor repeat hits. A
//! snapshot expires [`super::TantivyOptions::snapshot_ttl`] after its last use, and at
//! most [`super::TantivyOptions::snapshot_capacity`] are kept (the least recently used
//! goes first); a pinned searcher holds its segment files open, so the bound also bounds
//! the disk merges cannot yet reclaim.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tantivy::Searcher;

/// The searcher new queries use, with the id it would be pinned under.
#[derive(Clone)]
pub struct Current {
    pub id: u64,
    pub searcher: Searcher,
}

pub struct Snapshots {
    ttl: Duration,
    capacity: usize,
    pinned: Mutex<HashMap<u64, (Searcher, Instant)>>,
}

impl Snapshots {
    pub fn new(ttl: Duration, capacity: usize) -> Snapshots {
        Snapshots { ttl, capacity: capacity.max(1), pinned: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Searcher, Instant)>> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `current` for later pages (refreshing it if already kept).
    pub fn pin(&self, current: &Current) {
        let now = Instant::now();
        let mut pinned = self.lock();
        pinned.retain(|_, (_, used)| now.duration_since(*used) < self.ttl);
        if !pinned.contains_key(&current.id) && pinned.len() >= self.capacity {
            let oldest = pinned.iter().min_by_key(|(_, (_, used))| *used).map(|(id, _)| *id);
            if let Some(id) = oldest {
                pinned.remove(&id);
            }
        }
        pinned.insert(current.id, (current.searcher.clone(), now));
    }

    /// The pinned snapshot `id`, if it has not expired.
    pub fn get(&self, id: u64) -> Option<Searcher> {
        let now = Instant::now();
        let mut pinned = self.lock();
        let (searcher, used) = pinned.get_mut(&id)?;
        if now.duration_since(*used) >= self.ttl {
            pinned.remove(&id);
            return None;
        }
        *used = now;
        Some(searcher.clone())
    }

    /// How many are pinned (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
