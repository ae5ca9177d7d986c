//! Eviction as a policy that admits entries and returns victims, each step O(1); the caller
//! removes the victims (the cache does it on a background task, off every request's path).

use std::sync::Mutex;

use proxyd_storage_core::ObjectKey;

/// Decides what leaves the cache to keep it within a size.
pub trait EvictionPolicy: Send + Sync + std::fmt::Debug {
    /// Take `key` of `size` bytes in (again, if it was in already); the entries to evict now,
    /// with their sizes, so the total fits. The entry just admitted is never among them.
    fn admit(&self, key: &ObjectKey, size: u64) -> Vec<(ObjectKey, u64)>;
    /// `key` was used (hits are reported in batches, not one by one).
    fn touch(&self, key: &ObjectKey);
    /// `key` left the cache for another reason (its object vanished).
    fn remove(&self, key: &ObjectKey);
}

/// Least recently used first, within `max_bytes` (no limit when `None`).
#[derive(Debug)]
pub struct LruPolicy {
    max_bytes: Option<u64>,
    state: Mutex<LruState>,
}

#[derive(Debug)]
struct LruState {
    order: lru::LruCache<ObjectKey, u64>,
    total: u64,
}

impl LruPolicy {
    /// A policy that keeps the total within `max_bytes`.
    pub fn new(max_bytes: Option<u64>) -> Self {
        Self {
            max_bytes,
            state: Mutex::new(LruState {
                order: lru::LruCache::unbounded(),
                total: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LruState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EvictionPolicy for LruPolicy {
    fn admit(&self, key: &ObjectKey, size: u64) -> Vec<(ObjectKey, u64)> {
        let Some(max) = self.max_bytes else {
            // Nothing is ever evicted: keep no order (no memory per entry).
            return Vec::new();
        };
        let mut state = self.state();
        if let Some(old) = state.order.put(key.clone(), size) {
            state.total = state.total.saturating_sub(old);
        }
        state.total += size;
        let mut victims = Vec::new();
        while state.total > max {
            match state.order.peek_lru() {
                Some((oldest, _)) if oldest != key => {}
                _ => break, // only the entry just admitted is left
            }
            if let Some((victim, victim_size)) = state.order.pop_lru() {
                state.total = state.total.saturating_sub(victim_size);
                victims.push((victim, victim_size));
            }
        }
        victims
    }

    fn touch(&self, key: &ObjectKey) {
        if self.max_bytes.is_some() {
            self.state().order.promote(key);
        }
    }

    fn remove(&self, key: &ObjectKey) {
        let mut state = self.state();
        if let Some(size) = state.order.pop(key) {
            state.total = state.total.saturating_sub(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new(format!("t/{name}")).unwrap()
    }

    #[test]
    fn least_recently_used_leave_first_and_never_the_newcomer() {
        let policy = LruPolicy::new(Some(250));
        assert!(policy.admit(&key("a"), 100).is_empty());
        assert!(policy.admit(&key("b"), 100).is_empty());
        policy.touch(&key("a"));
        assert_eq!(policy.admit(&key("c"), 100), vec![(key("b"), 100)]);
        assert_eq!(
            policy.admit(&key("d"), 240),
            vec![(key("a"), 100), (key("c"), 100)]
        );
        assert!(
            policy.admit(&key("huge"), 1_000).contains(&(key("d"), 240)),
            "an entry larger than the limit stays, alone"
        );
        policy.remove(&key("huge"));
        assert!(policy.admit(&key("e"), 10).is_empty());
        let unbounded = LruPolicy::new(None);
        for n in 0..1_000 {
            assert!(unbounded.admit(&key(&n.to_string()), 1 << 30).is_empty());
        }
    }
}
