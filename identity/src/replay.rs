//! A bounded replay cache for token ids (`jti`): remembers each id until its token expires.
//! Memory is bounded by `capacity`; when full of unexpired ids it refuses new ones (fail closed)
//! rather than forget one that could then be replayed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasher, RandomState};

use parking_lot::Mutex;

const SHARDS: usize = 16;

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The token id was already used within its lifetime.
    #[error("token id already used")]
    Replayed,
    /// The cache holds its capacity of unexpired ids; refused rather than forgetting one.
    #[error("replay cache full")]
    Full,
}

#[derive(Default)]
struct Shard {
    /// Hashed id → expiry (seconds).
    seen: HashMap<u64, u64>,
    /// Expiry order, for pruning.
    expiries: BinaryHeap<Reverse<(u64, u64)>>,
}

/// The cache. Ids are stored as keyed 64-bit hashes (a collision refuses one valid token; it
/// never admits a replay).
pub struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: RandomState,
}

impl ReplayCache {
    /// A cache holding at most `capacity` unexpired ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            hasher: RandomState::new(),
        }
    }

    /// Records `jti` (valid until `exp`) at time `now`; refuses one already recorded.
    pub fn check_and_insert(&self, jti: &str, exp: u64, now: u64) -> Result<(), ReplayError> {
        let h = self.hasher.hash_one(jti);
        let mut shard = self.shards[(h as usize) % SHARDS].lock();
        while let Some(Reverse((e, key))) = shard.expiries.peek().copied() {
            if e >= now {
                break;
            }
            shard.expiries.pop();
            if shard.seen.get(&key) == Some(&e) {
                shard.seen.remove(&key);
            }
        }
        if let Some(&e) = shard.seen.get(&h)
            && e >= now
        {
            return Err(ReplayError::Replayed);
        }
        if shard.seen.len() >= self.per_shard {
            return Err(ReplayError::Full);
        }
        shard.seen.insert(h, exp);
        shard.expiries.push(Reverse((exp, h)));
        Ok(())
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().seen.len()).sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_replays_until_expiry() {
        let c = ReplayCache::new(100);
        assert_eq!(c.check_and_insert("a", 110, 100), Ok(()));
        assert_eq!(
            c.check_and_insert("a", 110, 105),
            Err(ReplayError::Replayed)
        );
        assert_eq!(
            c.check_and_insert("a", 120, 111),
            Ok(()),
            "expired ids may be reused"
        );
    }

    #[test]
    fn stays_bounded_under_a_million_distinct_ids() {
        let cap = 50_000;
        let c = ReplayCache::new(cap);
        let mut refused = 0;
        // 1,000,000 distinct ids, each valid 60 s, arriving 20,000 per second.
        for i in 0..1_000_000u64 {
            let now = 1_000 + i / 20_000;
            if c.check_and_insert(&format!("jti-{i}"), now + 60, now)
                .is_err()
            {
                refused += 1;
            }
            assert!(c.len() <= cap + SHARDS, "cache grew past its bound at {i}");
        }
        assert!(c.len() <= cap + SHARDS);
        // 20,000/s × 60 s = 1.2M live ids would be needed; the cache refuses what it cannot hold.
        assert!(refused > 0, "fail closed when full");
    }
}
