//! Idle upstream connections kept for reuse, **per actor** and destination (DESIGN §7.2: an
//! upstream connection is never shared between actors). An actor's next request — on the same
//! tunnel or on a later one — to the same destination reuses a kept connection instead of
//! dialling (and, intercepted, handshaking TLS) again; agents that open a new connection per
//! request pay the upstream handshake once.
//!
//! Bounded: at most [`PoolLimits::per_key`] connections per (owner, destination), at most
//! [`PoolLimits::total`] in all, and none unused longer than [`PoolLimits::idle`] (swept when
//! connections are taken or returned, at most once a second). An HTTP/1.1 connection is taken
//! out while it carries a request and handed out only when idle (ready); a shareable (h2) one
//! stays in the pool and is handed to requests while it can take another stream.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// What the pool needs to know about a connection.
pub(crate) trait Pooled: Sized {
    /// The connection has closed (never handed out again).
    fn is_closed(&self) -> bool;
    /// The connection can take a request now (HTTP/1.1: idle; h2: below its stream limit).
    fn is_ready(&self) -> bool;
    /// Identifies the connection (every handle of one h2 connection has the same id).
    fn id(&self) -> u64;
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
            // Below common server keep-alive timeouts (nginx 75 s); a kept connection the
            // server closed anyway is detected before the request goes out (see cleartext).
            idle: Duration::from_secs(30),
        }
    }
}

/// How often expired connections are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Connections by owner (an actor's identity, or one tunnel), then by destination: looked up
/// with borrowed keys, so handing out and returning allocate nothing once both exist.
type Map<T> = HashMap<Arc<str>, HashMap<String, VecDeque<Entry<T>>>>;

struct Entry<T> {
    conn: T,
    /// Last handed out or returned.
    used: Instant,
}

struct State<T> {
    map: Map<T>,
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
        let limits = PoolLimits {
            per_key: limits.per_key.max(1),
            total: limits.total.max(1),
            ..limits
        };
        Self {
            state: Mutex::new(State {
                map: HashMap::new(),
                total: 0,
                swept: Instant::now(),
            }),
            limits,
        }
    }

    /// A kept connection of `owner` to `dest` that can take a request now: a shared handle of
    /// a multiplexing one, or the most recently returned idle HTTP/1.1 one (taken out).
    pub(crate) fn take(&self, owner: &Arc<str>, dest: &str) -> Option<T> {
        let now = Instant::now();
        let mut state = self.state.lock();
        if now - state.swept >= SWEEP_EVERY {
            self.sweep(&mut state, now);
        }
        let State { map, total, .. } = &mut *state;
        let dests = map.get_mut(&**owner)?;
        let entries = dests.get_mut(dest)?;
        let before = entries.len();
        entries.retain(|e| !e.conn.is_closed() && now - e.used < self.limits.idle);
        *total -= before - entries.len();
        let mut found = None;
        for i in (0..entries.len()).rev() {
            if !entries[i].conn.is_ready() {
                continue;
            }
            if let Some(shared) = entries[i].conn.share() {
                entries[i].used = now;
                found = Some(shared);
            } else if let Some(e) = entries.remove(i) {
                *total -= 1;
                found = Some(e.conn);
            }
            break;
        }
        if entries.is_empty() {
            dests.remove(dest);
            if dests.is_empty() {
                map.remove(&**owner);
            }
        }
        found
    }

    /// Returns `conn` (after a request) for reuse; a shared connection already kept just counts
    /// as used. Dropped (closed) when closed or beyond the bounds (the least recently used of
    /// the destination goes first).
    pub(crate) fn put(&self, owner: &Arc<str>, dest: &str, conn: T) {
        if conn.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut state = self.state.lock();
        if now - state.swept >= SWEEP_EVERY {
            self.sweep(&mut state, now);
        }
        let State { map, total, .. } = &mut *state;
        if !map.contains_key(&**owner) {
            map.insert(owner.clone(), HashMap::new());
        }
        let Some(dests) = map.get_mut(&**owner) else {
            return;
        };
        if !dests.contains_key(dest) {
            dests.insert(dest.to_owned(), VecDeque::new());
        }
        let Some(entries) = dests.get_mut(dest) else {
            return;
        };
        if let Some(kept) = entries.iter_mut().find(|e| e.conn.id() == conn.id()) {
            kept.used = now;
            return;
        }
        if entries.len() >= self.limits.per_key
            && let Some(oldest) = (0..entries.len()).min_by_key(|&i| entries[i].used)
        {
            entries.remove(oldest);
            *total -= 1;
        }
        if *total >= self.limits.total {
            if entries.is_empty() {
                dests.remove(dest);
                if dests.is_empty() {
                    map.remove(&**owner);
                }
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
        state.map.retain(|_, dests| {
            dests.retain(|_, entries| {
                entries.retain(|e| !e.conn.is_closed() && now - e.used < idle);
                total += entries.len();
                !entries.is_empty()
            });
            !dests.is_empty()
        });
        state.total = total;
        state.swept = now;
    }

    /// Connections kept now, idle or shared (for `/statusz`).
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
        busy: Arc<AtomicBool>,
    }

    impl Pooled for Conn {
        fn is_closed(&self) -> bool {
            self.closed.load(Ordering::Relaxed)
        }
        fn is_ready(&self) -> bool {
            !self.busy.load(Ordering::Relaxed)
        }
        fn id(&self) -> u64 {
            u64::from(self.id)
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
            busy: Arc::default(),
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
    async fn shared_connections_are_kept_once_each_and_busy_ones_skipped() {
        let pool = UpstreamPool::new(PoolLimits::default());
        let a: Arc<str> = Arc::from("team/a");
        pool.put(&a, "x", conn(1, true));
        assert_eq!(pool.take(&a, "x").map(|c| c.id), Some(1));
        assert_eq!(pool.take(&a, "x").map(|c| c.id), Some(1), "still kept");
        pool.put(&a, "x", conn(1, true));
        assert_eq!(
            pool.len(),
            1,
            "a handle of a kept connection is not kept again"
        );
        let second = conn(2, true);
        let busy = second.busy.clone();
        pool.put(&a, "x", second);
        assert_eq!(pool.len(), 2);
        busy.store(true, Ordering::Relaxed);
        assert_eq!(
            pool.take(&a, "x").map(|c| c.id),
            Some(1),
            "a full one is skipped"
        );

        // An HTTP/1.1 connection still finishing a request is not handed out.
        let h1 = conn(3, false);
        let h1_busy = h1.busy.clone();
        pool.put(&a, "y", h1);
        h1_busy.store(true, Ordering::Relaxed);
        assert!(pool.take(&a, "y").is_none());
        h1_busy.store(false, Ordering::Relaxed);
        assert_eq!(pool.take(&a, "y").map(|c| c.id), Some(3));
    }
}
