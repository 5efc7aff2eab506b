//! The guard (DESIGN §7.2): the SSRF floor applied to every address the PEP is about to dial,
//! in audit mode too.
//!
//! Two lists, both the operator's (never a policy's):
//!
//! * **Guarded** (fixed): loopback, unspecified, link-local (incl. `169.254.169.254`),
//!   `fd00:ec2::254`, `100.100.100.200`, multicast, broadcast and the PEP's own listener
//!   addresses — also when embedded in IPv6 (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`
//!   and `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`). A guarded destination passes
//!   only when a `tcp` rule decided and that rule's CIDR lies inside the guarded range that
//!   holds the destination (`169.254.169.254/32` reaches the metadata service, `0.0.0.0/0` never
//!   does, a hostname rule never does).
//! * **Private** ([`GuardSettings::private`], default RFC 1918, ULA `fc00::/7`, CGNAT
//!   `100.64.0.0/10`): hostname rules reach these only when the rule sets `allow_private`.
//!
//! [`GuardSettings::exempt`] lifts both lists for operator lab ranges (e.g. a test's own
//! `127.0.0.0/8`); the PEP's own listener addresses stay guarded even then (no dialling into
//! itself). The guard is pure: it looks at addresses as values and never touches the network
//! (except that [`Guard::new`] reads the machine's interface addresses once, to know which
//! addresses a wildcard listener answers on).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::decision::Reason;

/// The operator's guard configuration (the `egress.guard` config section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardSettings {
    /// Private ranges: reachable by hostname rules only with `allow_private`, and by `tcp`
    /// rules. Default: [`default_private_ranges`].
    pub private: Vec<IpNet>,
    /// Ranges exempt from both the guarded and the private list (operator lab exemptions, e.g.
    /// `127.0.0.0/8` for a test that dials its own loopback). Default: empty. The PEP's own
    /// listener addresses are never exempt.
    pub exempt: Vec<IpNet>,
}

impl Default for GuardSettings {
    fn default() -> Self {
        GuardSettings {
            private: default_private_ranges(),
            exempt: Vec::new(),
        }
    }
}

/// The default private list: RFC 1918 (`10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`), CGNAT
/// (`100.64.0.0/10`) and IPv6 ULA (`fc00::/7`).
pub fn default_private_ranges() -> Vec<IpNet> {
    vec![
        v4net(Ipv4Addr::new(10, 0, 0, 0), 8),
        v4net(Ipv4Addr::new(172, 16, 0, 0), 12),
        v4net(Ipv4Addr::new(192, 168, 0, 0), 16),
        v4net(Ipv4Addr::new(100, 64, 0, 0), 10),
        v6net(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    ]
}

/// The fixed guarded ranges with a short label each (for `/statusz`, docs and refusal details).
/// The PEP's own listener addresses come on top of these.
pub fn guarded_ranges() -> Vec<(IpNet, &'static str)> {
    GUARDED.iter().map(|g| (g.net, g.label)).collect()
}

/// How the PEP came to dial an address: which kind of rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A hostname rule: the address is one of the PEP's own answers for the authorised name.
    /// Guarded addresses are refused; private ones unless `allow_private`.
    Name {
        /// Whether the deciding rule lets the name reach the private ranges.
        allow_private: bool,
    },
    /// The original destination. `tcp_rule` is the deciding `tcp` rule's CIDR; `None` means a
    /// hostname rule (`*` on an IP-literal authority) decided, which reaches neither guarded nor
    /// private addresses.
    Address {
        /// The deciding `tcp` rule's CIDR, when a `tcp` rule decided.
        tcp_rule: Option<IpNet>,
    },
}

/// Why the guard refused an address: the reason code plus the range that caught it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardRefusal {
    /// [`Reason::Guarded`] or [`Reason::PrivateAddress`].
    pub reason: Reason,
    /// The range that holds the address, in the address's own spelling (for an embedded IPv4
    /// address, the IPv6 prefix that embeds the guarded IPv4 range).
    pub range: IpNet,
    /// What the range is (`loopback`, `link-local`, `own listener`, `private`, ...), with the
    /// embedding when there is one (`link-local via NAT64`).
    pub label: &'static str,
    /// The embedding through which the address was caught (`IPv4-mapped`, `NAT64`, ...), if any.
    pub embedding: Option<&'static str>,
}

impl fmt::Display for GuardRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.embedding {
            Some(e) => write!(
                f,
                "{} range {} ({} via {e})",
                self.kind(),
                self.range,
                self.label
            ),
            None => write!(f, "{} range {} ({})", self.kind(), self.range, self.label),
        }
    }
}

impl GuardRefusal {
    fn kind(&self) -> &'static str {
        if self.reason == Reason::PrivateAddress {
            "private"
        } else {
            "guarded"
        }
    }
}

/// The guard: screens `ip:port` before every dial. Cheap to call (a few dozen prefix
/// comparisons, no allocation); share it behind an `Arc`.
#[derive(Debug, Clone)]
pub struct Guard {
    private: Vec<IpNet>,
    exempt: Vec<IpNet>,
    listeners: Vec<SocketAddr>,
    local_ips: Vec<IpAddr>,
}

impl Guard {
    /// A guard for `settings` and the PEP's own listener addresses. A wildcard listener
    /// (`0.0.0.0:15008`, `[::]:15008`) guards that port on every loopback, unspecified and local
    /// interface address; the interface addresses are read once here (a failure to read them
    /// leaves loopback and unspecified guarded, which the fixed list covers anyway).
    pub fn new(settings: &GuardSettings, own_listeners: Vec<SocketAddr>) -> Self {
        let local_ips = if own_listeners.iter().any(|l| l.ip().is_unspecified()) {
            local_interface_ips()
        } else {
            Vec::new()
        };
        Self::with_local_ips(settings, own_listeners, local_ips)
    }

    /// As [`Guard::new`], with the machine's interface addresses given instead of read (pure;
    /// for tests and for callers that track interfaces themselves).
    pub fn with_local_ips(
        settings: &GuardSettings,
        own_listeners: Vec<SocketAddr>,
        local_ips: Vec<IpAddr>,
    ) -> Self {
        Guard {
            private: settings.private.iter().map(IpNet::trunc).collect(),
            exempt: settings.exempt.iter().map(IpNet::trunc).collect(),
            listeners: own_listeners,
            local_ips: local_ips.into_iter().map(|ip| ip.to_canonical()).collect(),
        }
    }

    /// Whether the PEP may dial `addr` given how it got there. `Err` carries
    /// [`Reason::Guarded`] or [`Reason::PrivateAddress`].
    pub fn check(&self, addr: SocketAddr, via: Via) -> Result<(), Reason> {
        self.screen(addr, via).map_err(|r| r.reason)
    }

    /// As [`Guard::check`], with the range that refused the address (for logs and audit
    /// details).
    pub fn screen(&self, addr: SocketAddr, via: Via) -> Result<(), GuardRefusal> {
        let ip = addr.ip();
        let views = views(ip);
        // Guarded first: it wins over private.
        for view in views.iter().flatten() {
            for hit in self.guarded_hits(view, addr.port()) {
                let admitted = match via {
                    Via::Address {
                        tcp_rule: Some(cidr),
                    } => admits(cidr, ip, view, hit.range),
                    _ => false,
                };
                if !admitted {
                    return Err(GuardRefusal {
                        reason: Reason::Guarded,
                        range: view.spell(ip, hit.range),
                        label: hit.label,
                        embedding: view.embedding,
                    });
                }
            }
        }
        let private_applies = match via {
            Via::Name { allow_private } => !allow_private,
            Via::Address { tcp_rule } => tcp_rule.is_none(),
        };
        if private_applies {
            for view in views.iter().flatten() {
                if self.exempted(ip, view) {
                    continue;
                }
                if let Some(range) = self.private.iter().find(|r| r.contains(&view.ip)) {
                    return Err(GuardRefusal {
                        reason: Reason::PrivateAddress,
                        range: view.spell(ip, *range),
                        label: "private",
                        embedding: view.embedding,
                    });
                }
            }
        }
        Ok(())
    }

    /// The PEP's own listener addresses this guard protects.
    pub fn own_listeners(&self) -> &[SocketAddr] {
        &self.listeners
    }

    fn exempted(&self, ip: IpAddr, view: &View) -> bool {
        self.exempt
            .iter()
            .any(|e| e.contains(&view.ip) || e.contains(&ip))
    }

    /// Every guarded range holding `view.ip` (fixed list unless exempt; own listeners always).
    fn guarded_hits(&self, view: &View, port: u16) -> impl Iterator<Item = Hit> + '_ {
        let fixed = if self.exempted_view(view) {
            None
        } else {
            GUARDED
                .iter()
                .find(|g| g.net.contains(&view.ip))
                .map(|g| Hit {
                    range: g.net,
                    label: g.label,
                })
        };
        let own = self.is_own_listener(view.ip, port).then(|| Hit {
            range: IpNet::from(view.ip),
            label: "own listener",
        });
        fixed.into_iter().chain(own)
    }

    fn exempted_view(&self, view: &View) -> bool {
        self.exempt.iter().any(|e| e.contains(&view.ip))
            || view
                .outer
                .is_some_and(|outer| self.exempt.iter().any(|e| e.contains(&outer)))
    }

    /// Whether `ip:port` reaches one of the PEP's own listeners. `ip` is taken as spelled (an
    /// IPv4-mapped address is caught through its embedded view).
    fn is_own_listener(&self, ip: IpAddr, port: u16) -> bool {
        self.listeners.iter().any(|l| {
            if l.port() != port {
                return false;
            }
            let lip = l.ip().to_canonical();
            if lip.is_unspecified() {
                ip.is_loopback() || ip.is_unspecified() || self.local_ips.contains(&ip)
            } else {
                lip == ip || (lip.is_loopback() && ip.is_unspecified())
            }
        })
    }
}

/// Whether `cidr` (the deciding `tcp` rule) admits the guarded address `ip` caught in `range`
/// through `view`: the rule must hold the address and lie inside the range. A rule in the other
/// family than `ip` is read as naming the embedded IPv4 address directly.
fn admits(cidr: IpNet, ip: IpAddr, view: &View, range: IpNet) -> bool {
    let cidr = cidr.trunc();
    match (cidr, ip) {
        (IpNet::V4(_), IpAddr::V6(_)) | (IpNet::V6(_), IpAddr::V4(_)) => {
            view.embedding.is_some() && cidr.contains(&view.ip) && range.contains(&cidr)
        }
        _ => {
            let spelled = view.spell(ip, range);
            cidr.contains(&ip) && spelled.contains(&cidr)
        }
    }
}

/// A guarded range that caught an address.
#[derive(Debug, Clone, Copy)]
struct Hit {
    range: IpNet,
    label: &'static str,
}

/// One way to read a dialled address: the address itself, or an IPv4 address embedded in it.
#[derive(Debug, Clone, Copy)]
struct View {
    /// The address to test against the lists.
    ip: IpAddr,
    /// The embedding's name (`None` for the address itself).
    embedding: Option<&'static str>,
    /// For an embedded view, the IPv6 bit positions holding the IPv4 bits (see [`Embedding`]).
    segments: &'static [(u8, u8)],
    /// For an embedded view, the outer (dialled) address.
    outer: Option<IpAddr>,
}

impl View {
    /// `range` (which holds `self.ip`) spelled in the dialled address's terms: for an embedded
    /// view, the shortest IPv6 prefix of `outer` that fixes the range's IPv4 prefix bits.
    fn spell(&self, outer: IpAddr, range: IpNet) -> IpNet {
        let (IpAddr::V6(v6), Some(_)) = (outer, self.embedding) else {
            return range;
        };
        let mut remaining = range.prefix_len();
        let mut len = self.segments.first().map_or(128, |s| s.0);
        for &(start, seg_len) in self.segments {
            if remaining <= seg_len {
                len = start + remaining;
                break;
            }
            remaining -= seg_len;
            len = start + seg_len;
        }
        IpNet::V6(Ipv6Net::new(v6, len.min(128)).map_or(Ipv6Net::from(v6), |n| n.trunc()))
    }
}

/// An IPv6 range that embeds an IPv4 address.
struct Embedding {
    name: &'static str,
    prefix: Ipv6Net,
    /// `(start bit, length)` of each run of IPv4 bits in the IPv6 address, in order.
    segments: &'static [(u8, u8)],
    /// Whether the IPv4 bits are stored inverted (Teredo client address).
    inverted: bool,
}

const fn embedding(
    name: &'static str,
    prefix: Ipv6Addr,
    len: u8,
    segments: &'static [(u8, u8)],
    inverted: bool,
) -> Embedding {
    Embedding {
        name,
        prefix: Ipv6Net::new_assert(prefix, len),
        segments,
        inverted,
    }
}

/// Every IPv6 form that carries an IPv4 address the network may deliver to (RFC 4291 mapped and
/// compatible, RFC 6052 NAT64 — the local-use `64:ff9b:1::/48` with each prefix length it
/// allows, read conservatively —, RFC 3056 6to4, RFC 4380 Teredo server and client).
const EMBEDDINGS: &[Embedding] = &[
    embedding(
        "IPv4-mapped",
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        &[(96, 32)],
        false,
    ),
    embedding(
        "IPv4-compatible",
        Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0),
        96,
        &[(96, 32)],
        false,
    ),
    embedding(
        "NAT64",
        Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0),
        96,
        &[(96, 32)],
        false,
    ),
    embedding(
        "NAT64 local-use /48",
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        &[(48, 16), (72, 16)],
        false,
    ),
    embedding(
        "NAT64 local-use /56",
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        &[(56, 8), (72, 24)],
        false,
    ),
    embedding(
        "NAT64 local-use /64",
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        &[(72, 32)],
        false,
    ),
    embedding(
        "NAT64 local-use /96",
        Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0),
        48,
        &[(96, 32)],
        false,
    ),
    embedding(
        "6to4",
        Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0),
        16,
        &[(16, 32)],
        false,
    ),
    embedding(
        "Teredo server",
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        &[(32, 32)],
        false,
    ),
    embedding(
        "Teredo client",
        Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0),
        32,
        &[(96, 32)],
        true,
    ),
];

/// The address itself plus every IPv4 address embedded in it (at most one per embedding).
fn views(ip: IpAddr) -> [Option<View>; 1 + EMBEDDINGS.len()] {
    let mut out = [None; 1 + EMBEDDINGS.len()];
    out[0] = Some(View {
        ip,
        embedding: None,
        segments: &[],
        outer: None,
    });
    let IpAddr::V6(v6) = ip else {
        return out;
    };
    let bits = u128::from(v6);
    for (slot, e) in out[1..].iter_mut().zip(EMBEDDINGS) {
        if !e.prefix.contains(&v6) {
            continue;
        }
        let mut v4: u32 = 0;
        for &(start, len) in e.segments {
            let shift = 128 - u32::from(start) - u32::from(len);
            let mask = (1u128 << len) - 1;
            // The run fits in 32 bits: len <= 32.
            let run = ((bits >> shift) & mask) as u32;
            v4 = if len == 32 { run } else { (v4 << len) | run };
        }
        if e.inverted {
            v4 = !v4;
        }
        *slot = Some(View {
            ip: IpAddr::V4(Ipv4Addr::from(v4)),
            embedding: Some(e.name),
            segments: e.segments,
            outer: Some(ip),
        });
    }
    out
}

/// A fixed guarded range.
struct Guarded {
    net: IpNet,
    label: &'static str,
}

const fn g4(a: [u8; 4], len: u8, label: &'static str) -> Guarded {
    Guarded {
        net: IpNet::V4(Ipv4Net::new_assert(
            Ipv4Addr::new(a[0], a[1], a[2], a[3]),
            len,
        )),
        label,
    }
}

const fn g6(a: Ipv6Addr, len: u8, label: &'static str) -> Guarded {
    Guarded {
        net: IpNet::V6(Ipv6Net::new_assert(a, len)),
        label,
    }
}

/// DESIGN §7.2's guarded list (own listener addresses are checked separately).
const GUARDED: &[Guarded] = &[
    g4([0, 0, 0, 0], 8, "unspecified"),
    g4([127, 0, 0, 0], 8, "loopback"),
    g4([169, 254, 0, 0], 16, "link-local"),
    g4([100, 100, 100, 200], 32, "metadata"),
    g4([224, 0, 0, 0], 4, "multicast"),
    g4([255, 255, 255, 255], 32, "broadcast"),
    g6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128, "unspecified"),
    g6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128, "loopback"),
    g6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10, "link-local"),
    g6(
        Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254),
        128,
        "metadata",
    ),
    g6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8, "multicast"),
];

fn v4net(ip: Ipv4Addr, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(ip, len))
}

fn v6net(ip: Ipv6Addr, len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(ip, len))
}

/// The addresses of the machine's interfaces (empty when they cannot be read).
fn local_interface_ips() -> Vec<IpAddr> {
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter_map(|a| {
                let sa = a.address?;
                if let Some(v4) = sa.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                }
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "guard: cannot read interface addresses; own wildcard listeners guarded on loopback only");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }
    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }
    fn guard() -> Guard {
        Guard::with_local_ips(
            &GuardSettings::default(),
            vec![sa("0.0.0.0:15008"), sa("10.9.9.9:15009")],
            vec!["10.1.2.3".parse().expect("ip")],
        )
    }
    const NAME: Via = Via::Name {
        allow_private: false,
    };
    const NAME_PRIVATE: Via = Via::Name {
        allow_private: true,
    };
    const STAR_IP: Via = Via::Address { tcp_rule: None };
    fn tcp(s: &str) -> Via {
        Via::Address {
            tcp_rule: Some(net(s)),
        }
    }

    /// Addresses the guard must refuse for every hostname rule, `*` and `0.0.0.0/0` / `::/0`.
    const GUARDED_CASES: &[&str] = &[
        "169.254.169.254:80",
        "[::ffff:169.254.169.254]:80",
        "[64:ff9b::a9fe:a9fe]:80",
        "[64:ff9b:1:a9fe:a9:fe00::]:80", // /48 embedding of 169.254.169.254 (u-octet skipped)
        "[64:ff9b:1::a9fe:a9fe]:80",     // /96 embedding inside the local-use prefix
        "[2002:a9fe:a9fe::1]:80",        // 6to4
        "[2002:7f00:1::1]:80",           // 6to4 of 127.0.0.1
        "[2001:0:4136:e378:8000:63bf:5601:5601]:80", // Teredo client 169.254.169.254 (inverted)
        "[2001:0:7f00:1::1]:80",         // Teredo server 127.0.0.1
        "[::127.0.0.1]:80",              // IPv4-compatible
        "127.0.0.1:80",
        "127.1.2.3:443",
        "0.0.0.0:80",
        "[::]:80",
        "[::1]:80",
        "[fe80::1]:80",
        "[fd00:ec2::254]:80",
        "100.100.100.200:80",
        "224.0.0.1:80",
        "239.255.255.250:1900",
        "[ff02::1]:80",
        "255.255.255.255:80",
        "10.1.2.3:15008", // own wildcard listener on a local interface address
        "10.9.9.9:15009", // own specific listener
        "[::ffff:10.9.9.9]:15009",
    ];

    #[test]
    fn guarded_addresses_refused_for_names_star_and_broad_tcp_rules() {
        let g = guard();
        for case in GUARDED_CASES {
            let addr = sa(case);
            let broad = if addr.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            for via in [NAME, NAME_PRIVATE, STAR_IP, tcp(broad)] {
                assert_eq!(
                    g.check(addr, via),
                    Err(Reason::Guarded),
                    "{case} via {via:?} must be guarded"
                );
            }
        }
    }

    #[test]
    fn guarded_address_passes_only_a_tcp_rule_inside_its_range() {
        let g = guard();
        let meta = sa("169.254.169.254:80");
        assert_eq!(g.check(meta, tcp("169.254.169.254/32")), Ok(()));
        assert_eq!(g.check(meta, tcp("169.254.0.0/16")), Ok(()));
        assert_eq!(g.check(meta, tcp("169.254.0.0/15")), Err(Reason::Guarded));
        assert_eq!(g.check(meta, tcp("0.0.0.0/0")), Err(Reason::Guarded));
        // A rule that does not even hold the address admits nothing.
        assert_eq!(g.check(meta, tcp("169.254.1.0/24")), Err(Reason::Guarded));
        // Embedded forms: the rule spelled in the dialled family, inside the embedded range.
        let mapped = sa("[::ffff:169.254.169.254]:80");
        assert_eq!(g.check(mapped, tcp("::ffff:169.254.169.254/128")), Ok(()));
        assert_eq!(g.check(mapped, tcp("::ffff:169.254.0.0/112")), Ok(()));
        assert_eq!(g.check(mapped, tcp("::ffff:0:0/96")), Err(Reason::Guarded));
        assert_eq!(g.check(mapped, tcp("169.254.169.254/32")), Ok(()));
        let nat64 = sa("[64:ff9b::a9fe:a9fe]:80");
        assert_eq!(g.check(nat64, tcp("64:ff9b::a9fe:a9fe/128")), Ok(()));
        assert_eq!(g.check(nat64, tcp("64:ff9b::/96")), Err(Reason::Guarded));
        let teredo = sa("[2001:0:4136:e378:8000:63bf:5601:5601]:80");
        assert_eq!(
            g.check(teredo, tcp("2001:0:4136:e378:8000:63bf:5601:5601/128")),
            Ok(())
        );
        assert_eq!(g.check(teredo, tcp("2001::/32")), Err(Reason::Guarded));
        // Loopback and unspecified, named exactly.
        assert_eq!(g.check(sa("127.0.0.1:80"), tcp("127.0.0.1/32")), Ok(()));
        assert_eq!(g.check(sa("127.0.0.1:80"), tcp("127.0.0.0/8")), Ok(()));
        assert_eq!(
            g.check(sa("127.0.0.1:80"), tcp("0.0.0.0/1")),
            Err(Reason::Guarded)
        );
        assert_eq!(g.check(sa("0.0.0.0:80"), tcp("0.0.0.0/32")), Ok(()));
        assert_eq!(
            g.check(sa("[fd00:ec2::254]:80"), tcp("fd00:ec2::254/128")),
            Ok(())
        );
        assert_eq!(
            g.check(sa("[fd00:ec2::254]:80"), tcp("fc00::/7")),
            Err(Reason::Guarded)
        );
        assert_eq!(
            g.check(sa("100.100.100.200:80"), tcp("100.100.100.200/32")),
            Ok(())
        );
        assert_eq!(
            g.check(sa("100.100.100.200:80"), tcp("100.64.0.0/10")),
            Err(Reason::Guarded)
        );
        assert_eq!(g.check(sa("224.0.0.1:80"), tcp("224.0.0.0/4")), Ok(()));
        assert_eq!(
            g.check(sa("255.255.255.255:80"), tcp("255.255.255.255/32")),
            Ok(())
        );
    }

    #[test]
    fn own_listener_addresses_need_a_rule_naming_them() {
        let g = guard();
        // Wildcard listener: loopback, unspecified and local interface addresses on its port.
        for case in [
            "127.0.0.1:15008",
            "0.0.0.0:15008",
            "10.1.2.3:15008",
            "[::1]:15008",
        ] {
            assert_eq!(
                g.check(sa(case), tcp("0.0.0.0/0")),
                Err(Reason::Guarded),
                "{case}"
            );
        }
        // Another port on that interface address is an ordinary private address.
        assert_eq!(g.check(sa("10.1.2.3:8080"), tcp("10.0.0.0/8")), Ok(()));
        assert_eq!(
            g.check(sa("10.1.2.3:15008"), tcp("10.0.0.0/8")),
            Err(Reason::Guarded)
        );
        assert_eq!(g.check(sa("10.1.2.3:15008"), tcp("10.1.2.3/32")), Ok(()));
        // Loopback on the listener port: the loopback range admits loopback but not the
        // listener; only a rule naming the address does.
        assert_eq!(
            g.check(sa("127.0.0.1:15008"), tcp("127.0.0.0/8")),
            Err(Reason::Guarded)
        );
        assert_eq!(g.check(sa("127.0.0.1:15008"), tcp("127.0.0.1/32")), Ok(()));
        // Even an exempt range does not open the PEP's own listener.
        let exempt = Guard::with_local_ips(
            &GuardSettings {
                exempt: vec![net("127.0.0.0/8")],
                ..GuardSettings::default()
            },
            vec![sa("127.0.0.1:15008")],
            vec![],
        );
        assert_eq!(
            exempt.check(sa("127.0.0.1:15008"), NAME),
            Err(Reason::Guarded)
        );
        assert_eq!(exempt.check(sa("127.0.0.1:8080"), NAME), Ok(()));
        assert_eq!(
            exempt.check(sa("0.0.0.0:15008"), NAME),
            Err(Reason::Guarded)
        );
    }

    #[test]
    fn private_ranges_need_allow_private_on_hostname_rules() {
        let g = guard();
        for case in [
            "10.0.0.1:443",
            "172.16.5.4:443",
            "192.168.1.1:443",
            "100.64.0.1:443",
            "[fd12::1]:443",
            "[::ffff:10.0.0.1]:443",
            "[64:ff9b::a00:1]:443",
            "[2002:c0a8:101::1]:443",
        ] {
            let addr = sa(case);
            assert_eq!(g.check(addr, NAME), Err(Reason::PrivateAddress), "{case}");
            assert_eq!(
                g.check(addr, STAR_IP),
                Err(Reason::PrivateAddress),
                "{case}"
            );
            assert_eq!(g.check(addr, NAME_PRIVATE), Ok(()), "{case}");
            let any = if addr.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            assert_eq!(
                g.check(addr, tcp(any)),
                Ok(()),
                "{case}: tcp rules reach private"
            );
        }
        // Public addresses pass every way.
        for case in [
            "93.184.216.34:443",
            "[2606:2800:220:1::1]:443",
            "100.128.0.1:80",
        ] {
            for via in [NAME, STAR_IP, tcp("0.0.0.0/0")] {
                assert_eq!(g.check(sa(case), via), Ok(()), "{case}");
            }
        }
        // The private list is the operator's.
        let none = Guard::with_local_ips(
            &GuardSettings {
                private: vec![],
                exempt: vec![],
            },
            vec![],
            vec![],
        );
        assert_eq!(none.check(sa("10.0.0.1:443"), NAME), Ok(()));
    }

    #[test]
    fn exempt_lifts_guarded_and_private_lists() {
        let g = Guard::with_local_ips(
            &GuardSettings {
                private: default_private_ranges(),
                exempt: vec![net("127.0.0.0/8"), net("::1/128"), net("10.5.0.0/16")],
            },
            vec![],
            vec![],
        );
        assert_eq!(g.check(sa("127.0.0.1:8080"), NAME), Ok(()));
        assert_eq!(g.check(sa("[::1]:8080"), NAME), Ok(()));
        assert_eq!(g.check(sa("[::ffff:127.0.0.1]:8080"), NAME), Ok(()));
        assert_eq!(g.check(sa("10.5.1.1:8080"), NAME), Ok(()));
        assert_eq!(
            g.check(sa("10.6.1.1:8080"), NAME),
            Err(Reason::PrivateAddress)
        );
        assert_eq!(
            g.check(sa("169.254.169.254:80"), NAME),
            Err(Reason::Guarded)
        );
    }

    #[test]
    fn refusal_names_the_range_in_the_dialled_spelling() {
        let g = guard();
        let r = g
            .screen(sa("[64:ff9b::a9fe:a9fe]:80"), NAME)
            .expect_err("guarded");
        assert_eq!(r.reason, Reason::Guarded);
        assert_eq!(r.range, net("64:ff9b::a9fe:0/112"));
        assert_eq!(r.label, "link-local");
        assert_eq!(r.embedding, Some("NAT64"));
        assert!(r.to_string().contains("link-local via NAT64"), "{r}");
        let r = g
            .screen(sa("[2002:a9fe:a9fe::1]:80"), NAME)
            .expect_err("guarded");
        assert_eq!(r.range, net("2002:a9fe::/32"));
        let r = g
            .screen(sa("[64:ff9b:1:a9fe:a9:fe00::]:80"), NAME)
            .expect_err("guarded");
        assert_eq!(
            (r.label, r.embedding),
            ("link-local", Some("NAT64 local-use /48"))
        );
        assert_eq!(r.range, net("64:ff9b:1:a9fe::/64"));
        let r = g.screen(sa("192.168.1.1:80"), NAME).expect_err("private");
        assert_eq!(
            (r.reason, r.range),
            (Reason::PrivateAddress, net("192.168.0.0/16"))
        );
    }

    #[test]
    fn embedded_extraction() {
        let ip: IpAddr = "2001:0:4136:e378:8000:63bf:3fff:fdd2".parse().expect("ip");
        let v = views(ip);
        let client = v
            .iter()
            .flatten()
            .find(|v| v.embedding == Some("Teredo client"))
            .expect("teredo client view");
        // RFC 4380 example: client 192.0.2.45.
        assert_eq!(client.ip, "192.0.2.45".parse::<IpAddr>().expect("ip"));
        let server = v
            .iter()
            .flatten()
            .find(|v| v.embedding == Some("Teredo server"))
            .expect("teredo server view");
        assert_eq!(server.ip, "65.54.227.120".parse::<IpAddr>().expect("ip"));
        let ip: IpAddr = "64:ff9b:1:c000:2:2100::".parse().expect("ip");
        assert!(
            views(ip)
                .iter()
                .flatten()
                .any(|v| v.ip == "192.0.2.33".parse::<IpAddr>().expect("ip")
                    && v.embedding == Some("NAT64 local-use /48"))
        );
        assert_eq!(guarded_ranges().len(), GUARDED.len());
    }
}
