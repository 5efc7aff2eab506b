//! Idle upstream connections kept for reuse, **per actor** and destination (DESIGN §7.2: an
//! upstream connection is never shared between actors). An actor's next request — on the same
//! tunnel or on a later one — to the same destination reuses a kept connection instead of
//! dialling (and, intercepted, handshaking TLS) again; agents that open a new connection per
//! request pay the upstream handshake once.
//!
//! Bounded: at most [`PoolLimits::per_key`] idle connections per (owner, destination), at most
//! [`PoolLimits::total`] in all, and none idle longer than [`PoolLimits::idle`] (swept when
//! connections are returned, at most once a second). An HTTP/1.1 connection is taken out while
//! it carries a request; a shareable (h2) one stays in the pool and is handed to every request.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// What the pool needs to know about a connection.
pub(crate) trait Pooled: Sized {
    /// The connection has closed (never handed out again).
    fn is_closed(&self) -> bool;
    /// A handle for one more request when the connection multiplexes (h2), else `None`.
    fn share(&self) -> Option<Self>;
}

/// Bounds of an [`UpstreamPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Idle connections per (owner, destination).
    pub per_key: usize,
    /// Idle connections in all.
    pub total: usize,
    /// An idle connection is dropped (closed) after this long unused.
    pub idle: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            per_key: 64,
            total: 4096,
            idle: Duration::from_secs(90),
        }
    }
}

/// The pool's key: the owner (an actor's identity, or one tunnel) and the destination.
type Key = (Arc<str>, String);

struct Entry<T> {
    conn: T,
    /// Last handed out or returned.
    used: Instant,
}

struct State<T> {
    map: HashMap<Key, VecDeque<Entry<T>>>,
    total: usize,
    swept: Instant,
}

/// Idle upstream connections by owner and destination.
pub(crate) struct UpstreamPool<T> {
    state: Mutex<State<T>>,
    limits: PoolLimits,
}

impl<T: Pooled> UpstreamPool<T> {
    pub(crate) fn new(limits: PoolLimits) -> Self {
        Self {
            state: Mutex::new(State {
                map: HashMap::new(),
                total: 0,
                swept: Instant::now(),
            }),
            limits,
        }
    }

    /// A kept, open connection of `owner` to `dest`: a shared handle of a multiplexing one, or
    /// the most recently returned HTTP/1.1 one (taken out).
    pub(crate) fn take(&self, owner: &Arc<str>, dest: &str) -> Option<T> {
        let mut state = self.state.lock();
        let State { map, total, .. } = &mut *state;
        let key = (owner.clone(), dest.to_owned());
        let entries = map.get_mut(&key)?;
        let now = Instant::now();
        let fresh = |e: &Entry<T>| !e.conn.is_closed() && now - e.used < self.limits.idle;
        let before = entries.len();
        entries.retain(fresh);
        *total -= before - entries.len();
        let found = if let Some(shared) = entries.iter_mut().find_map(|e| {
            let s = e.conn.share()?;
            e.used = now;
            Some(s)
        }) {
            Some(shared)
        } else {
            entries.pop_back().map(|e| {
                *total -= 1;
                e.conn
            })
        };
        if entries.is_empty() {
            map.remove(&key);
        }
        found
    }

    /// Returns `conn` (after a request) for reuse; dropped (closed) when closed, when a shared
    /// connection to the destination is already kept, or beyond the bounds.
    pub(crate) fn put(&self, owner: &Arc<str>, dest: &str, conn: T) {
        if conn.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state.lock();
        if now - state.swept >= Duration::from_secs(1) {
            self.sweep(&mut state, now);
        }
        let State { map, total, .. } = &mut *state;
        let entries = map.entry((owner.clone(), dest.to_owned())).or_default();
        let shared = conn.share().is_some();
        if shared
            && entries
                .iter()
                .any(|e| e.conn.share().is_some() && !e.conn.is_closed())
        {
            return;
        }
        if entries.len() >= self.limits.per_key {
            entries.pop_front();
            *total -= 1;
        }
        if *total >= self.limits.total {
            if entries.is_empty() {
                map.remove(&(owner.clone(), dest.to_owned()));
            }
            return;
        }
        entries.push_back(Entry { conn, used: now });
        *total += 1;
    }

    /// Drops closed and expired connections everywhere.
    fn sweep(&self, state: &mut State<T>, now: Instant) {
        let idle = self.limits.idle;
        let mut total = 0;
        state.map.retain(|_, entries| {
            entries.retain(|e| !e.conn.is_closed() && now - e.used < idle);
            total += entries.len();
            !entries.is_empty()
        });
        state.total = total;
        state.swept = now;
    }

    /// Idle connections kept now (for `/statusz`).
    pub(crate) fn len(&self) -> usize {
        self.state.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Clone)]
    struct Conn {
        id: u32,
        h2: bool,
        closed: Arc<AtomicBool>,
    }

    impl Pooled for Conn {
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Relaxed)
        }
        fn share(&self) -> Option<Self> {
            self.h2.then(|| self.clone())
        }
    }

    fn conn(id: u32, h2: bool) -> Conn {
        Conn {
            id,
            h2,
            closed: Arc::default(),
        }
    }

    #[tokio::test]
    async fn owners_never_share_and_idle_connections_expire() {
        let pool = UpstreamPool::new(PoolLimits {
            per_key: 2,
            total: 3,
            idle: Duration::from_secs(1),
        });
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("team/a"), Arc::from("team/b"));
        pool.put(&a, "x", conn(1, false));
        assert!(pool.take(&b, "x").is_none(), "another owner's connection");
        assert!(pool.take(&a, "y").is_none(), "another destination");
        assert_eq!(pool.take(&a, "x").map(|c| c.id), Some(1));
        assert!(
            pool.take(&a, "x").is_none(),
            "an HTTP/1.1 connection is taken out"
        );

        // Per key and total bounds: the oldest goes; beyond the total nothing is kept.
        pool.put(&a, "x", conn(2, false));
        pool.put(&a, "x", conn(3, false));
        pool.put(&a, "x", conn(4, false));
        assert_eq!(pool.len(), 2);
        pool.put(&b, "x", conn(5, false));
        pool.put(&b, "y", conn(6, false));
        assert_eq!(pool.len(), 3);
        assert!(pool.take(&b, "y").is_none(), "beyond the total bound");
        assert_eq!(pool.take(&a, "x").map(|c| c.id), Some(4));

        // Closed and expired connections are never handed out.
        let c = conn(7, false);
        let closed = c.closed.clone();
        pool.put(&a, "z", c);
        closed.store(true, Ordering::Relaxed);
        assert!(pool.take(&a, "z").is_none());
        pool.put(&a, "w", conn(8, false));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(pool.take(&a, "w").is_none(), "idle beyond the bound");
    }

    #[tokio::test]
    async fn an_h2_connection_is_shared_and_kept_once() {
        let pool = UpstreamPool::new(PoolLimits::default());
        let a: Arc<str> = Arc::from("team/a");
        pool.put(&a, "x", conn(1, true));
        assert_eq!(pool.take(&a, "x").map(|c| c.id), Some(1));
        assert_eq!(pool.take(&a, "x").map(|c| c.id), Some(1), "still kept");
        pool.put(&a, "x", conn(1, true));
        pool.put(&a, "x", conn(2, true));
        assert_eq!(pool.len(), 1, "one shared connection per destination");
    }
}
