//! The PEP's own resolver (DESIGN §7.2 "Where traffic goes"): hostname rules dial the
//! authorised name as the PEP resolves it, never the IP the actor dialed.
//!
//! * Static entries (config `egress.resolver.static`) answer first and never leave the machine
//!   (tests, air-gapped sites, pinning a name).
//! * Otherwise hickory-resolver with the system configuration (`/etc/resolv.conf`, hosts file),
//!   or with explicit name servers ([`ResolverSettings::name_servers`]).
//! * Answers are cached per name in a bounded cache (at most [`ResolverSettings::cache_size`]
//!   names) for the record TTL clamped to `[min_ttl, max_ttl]`; concurrent lookups of one name
//!   share one query (single flight). Failures are not cached here (hickory's own bounded cache
//!   keeps negative answers for their SOA TTL, clamped the same way).
//!
//! The answers are not screened here: the [`crate::forward::Dialer`] passes every one through
//! the [`crate::guard::Guard`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use moka::future::Cache;

/// The resolver's configuration (the `egress.resolver` config section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Names answered locally, before any DNS (lowercase; a trailing dot is ignored). Never
    /// cached, never sent anywhere.
    pub static_entries: HashMap<String, Vec<IpAddr>>,
    /// Whether names without a static entry are resolved through DNS at all. `false`: only
    /// static entries answer (everything else fails with [`ResolveError::NotFound`]).
    pub use_system: bool,
    /// DNS servers to ask instead of the system configuration (`ip:port`, UDP then TCP); empty
    /// = the system's (`/etc/resolv.conf`). Only used with `use_system`.
    pub name_servers: Vec<SocketAddr>,
    /// Most names kept in the answer cache.
    pub cache_size: u64,
    /// Shortest time an answer is cached, whatever its TTL.
    pub min_ttl: Duration,
    /// Longest time an answer is cached, whatever its TTL.
    pub max_ttl: Duration,
    /// Bound on one lookup (all servers and retries).
    pub timeout: Duration,
}

impl Default for ResolverSettings {
    /// No static entries, system DNS, 4,096 names cached for their TTL clamped to
    /// `[1 s, 300 s]`, 5 s per lookup.
    fn default() -> Self {
        ResolverSettings {
            static_entries: HashMap::new(),
            use_system: true,
            name_servers: Vec::new(),
            cache_size: 4096,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(5),
        }
    }
}

/// A lookup or setup failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The resolver could not be set up (system configuration unreadable, bad settings).
    #[error("resolver configuration: {0}")]
    Config(String),
    /// The name does not exist or has no address records (or DNS is disabled and it has no
    /// static entry).
    #[error("{name}: no address records")]
    NotFound {
        /// The name looked up.
        name: String,
    },
    /// The lookup failed (timeout, server failure, unreachable server).
    #[error("{name}: lookup failed: {detail}")]
    Failed {
        /// The name looked up.
        name: String,
        /// What went wrong.
        detail: String,
    },
}

/// A cached answer: the addresses and how long they stay cached.
#[derive(Debug, Clone)]
struct Answer {
    addrs: Arc<[IpAddr]>,
    ttl: Duration,
}

/// Expires each cached answer after its own (clamped) TTL.
struct AnswerExpiry;

impl moka::Expiry<Arc<str>, Answer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Answer,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The PEP's resolver. Share it behind an `Arc`; lookups are `&self`.
pub struct PepResolver {
    static_entries: HashMap<String, Arc<[IpAddr]>>,
    dns: Option<TokioResolver>,
    cache: Cache<Arc<str>, Answer>,
    min_ttl: Duration,
    max_ttl: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for PepResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PepResolver")
            .field("static_entries", &self.static_entries.len())
            .field("dns", &self.dns.is_some())
            .field("cache_entries", &self.cache.entry_count())
            .finish()
    }
}

impl PepResolver {
    /// A resolver for `settings`. With `use_system` and no `name_servers`, reads the system
    /// configuration now ([`ResolveError::Config`] when it cannot). Does not query anything.
    pub fn new(settings: &ResolverSettings) -> Result<Self, ResolveError> {
        if settings.min_ttl > settings.max_ttl {
            return Err(ResolveError::Config(format!(
                "min_ttl {:?} is above max_ttl {:?}",
                settings.min_ttl, settings.max_ttl
            )));
        }
        if settings.timeout.is_zero() {
            return Err(ResolveError::Config("timeout must be above zero".into()));
        }
        let static_entries = settings
            .static_entries
            .iter()
            .map(|(name, addrs)| (normalize(name), Arc::from(addrs.as_slice())))
            .collect();
        let dns = if settings.use_system {
            let provider = TokioRuntimeProvider::default();
            let mut builder = if settings.name_servers.is_empty() {
                TokioResolver::builder(provider)
                    .map_err(|e| ResolveError::Config(format!("system DNS configuration: {e}")))?
            } else {
                let servers = settings
                    .name_servers
                    .iter()
                    .map(|addr| {
                        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                        for c in &mut ns.connections {
                            c.port = addr.port();
                        }
                        ns
                    })
                    .collect();
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(servers),
                    provider,
                )
            };
            let opts = builder.options_mut();
            opts.cache_size = settings.cache_size;
            opts.positive_min_ttl = Some(settings.min_ttl);
            opts.positive_max_ttl = Some(settings.max_ttl);
            opts.negative_min_ttl = Some(settings.min_ttl);
            opts.negative_max_ttl = Some(settings.max_ttl);
            // One query's bound: leave room for a retry or a second server within `timeout`.
            opts.timeout = (settings.timeout / 2).max(Duration::from_millis(100));
            opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
            Some(
                builder
                    .build()
                    .map_err(|e| ResolveError::Config(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(PepResolver {
            static_entries,
            dns,
            cache: Cache::builder()
                .max_capacity(settings.cache_size)
                .expire_after(AnswerExpiry)
                .build(),
            min_ttl: settings.min_ttl,
            max_ttl: settings.max_ttl,
            timeout: settings.timeout,
        })
    }

    /// The addresses of `name` (a DNS name; one trailing dot and case are ignored), in answer
    /// order (IPv4 before IPv6). Static entries answer first; then the cache; then DNS (one
    /// query in flight per name). Never empty on `Ok`.
    pub async fn lookup(&self, name: &str) -> Result<Arc<[IpAddr]>, ResolveError> {
        let name = normalize(name);
        if let Some(addrs) = self.static_entries.get(&name) {
            return if addrs.is_empty() {
                Err(ResolveError::NotFound { name })
            } else {
                Ok(addrs.clone())
            };
        }
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Ok(Arc::from([ip].as_slice()));
        }
        let Some(dns) = &self.dns else {
            return Err(ResolveError::NotFound { name });
        };
        let key: Arc<str> = Arc::from(name.as_str());
        let answer = self
            .cache
            .try_get_with(key, self.query(dns, &name))
            .await
            .map_err(|e| (*e).clone())?;
        Ok(answer.addrs)
    }

    /// How many names the answer cache holds (approximate: pending evictions may not be
    /// counted yet). For the `actorgate_egress_dns_cache_entries` gauge.
    pub fn cache_entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Applies pending cache bookkeeping (insertions, expirations, evictions) now, so that
    /// [`PepResolver::cache_entries`] is exact afterwards. The cache also does this by itself
    /// as it is used; call it from a periodic task or before reading the count in a test.
    pub async fn run_cache_maintenance(&self) {
        self.cache.run_pending_tasks().await;
    }

    async fn query(&self, dns: &TokioResolver, name: &str) -> Result<Answer, ResolveError> {
        // A dotted name is asked as a fully-qualified name: no search-list expansion (the
        // policy authorised exactly this name). A single label keeps the system's search list.
        let fqdn = if name.contains('.') {
            format!("{name}.")
        } else {
            name.to_string()
        };
        let lookup = match tokio::time::timeout(self.timeout, dns.lookup_ip(fqdn)).await {
            Ok(Ok(lookup)) => lookup,
            Ok(Err(e)) if e.is_no_records_found() => {
                return Err(ResolveError::NotFound { name: name.into() });
            }
            Ok(Err(e)) => {
                return Err(ResolveError::Failed {
                    name: name.into(),
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                return Err(ResolveError::Failed {
                    name: name.into(),
                    detail: format!("timed out after {:?}", self.timeout),
                });
            }
        };
        let mut addrs: Vec<IpAddr> = Vec::new();
        for ip in lookup.iter() {
            if !addrs.contains(&ip) {
                addrs.push(ip);
            }
        }
        if addrs.is_empty() {
            return Err(ResolveError::NotFound { name: name.into() });
        }
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now())
            .clamp(self.min_ttl, self.max_ttl);
        Ok(Answer {
            addrs: addrs.into(),
            ttl,
        })
    }
}

/// Lowercase, without one trailing dot.
fn normalize(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test]
    async fn static_entries_answer_without_dns() {
        let settings = ResolverSettings {
            static_entries: HashMap::from([
                (
                    "Api.Example.com.".to_string(),
                    vec![ip("127.0.0.5"), ip("::1")],
                ),
                ("empty.example".to_string(), vec![]),
            ]),
            use_system: false,
            ..ResolverSettings::default()
        };
        let r = PepResolver::new(&settings).expect("resolver");
        for name in ["api.example.com", "API.example.com.", "api.EXAMPLE.com"] {
            let got = r.lookup(name).await.expect("static answer");
            assert_eq!(&*got, &[ip("127.0.0.5"), ip("::1")], "{name}");
        }
        assert_eq!(
            r.lookup("other.example.com").await,
            Err(ResolveError::NotFound {
                name: "other.example.com".into()
            })
        );
        assert!(matches!(
            r.lookup("empty.example").await,
            Err(ResolveError::NotFound { .. })
        ));
        assert_eq!(r.cache_entries(), 0, "static answers are not cached");
    }

    #[test]
    fn bad_settings_refused() {
        let s = ResolverSettings {
            use_system: false,
            min_ttl: Duration::from_secs(10),
            max_ttl: Duration::from_secs(1),
            ..ResolverSettings::default()
        };
        assert!(matches!(PepResolver::new(&s), Err(ResolveError::Config(_))));
        let s = ResolverSettings {
            use_system: false,
            timeout: Duration::ZERO,
            ..ResolverSettings::default()
        };
        assert!(matches!(PepResolver::new(&s), Err(ResolveError::Config(_))));
    }
}
