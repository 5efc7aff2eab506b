//! Policy decision latency with 10, 1,000 and 10,000 rules (issue 11 bar: p50 ≤ 1 µs at
//! 10,000 rules). First prints p50/p99 per rule count over a mix of queries (exact SNI hit,
//! wildcard SNI hit, SNI miss, cleartext request with method/path, `tcp` hit, opaque miss), each
//! call timed on its own (the clock read, ~20–30 ns, is included: the numbers are an upper
//! bound); then runs the criterion benchmarks.
//! Run: `cargo bench -p egress-pep --bench policy`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use criterion::Criterion;
use egress_pep::decision::{Query, Traffic};
use egress_pep::policy::CompiledPolicy;
use egress_pep::policy::hostname::HostPattern;
use egress_pep::policy::model::{HostRule, Mode, Policy, Ports, Rule, RuleSpec, TcpRule};

const SIZES: [usize; 3] = [10, 1_000, 10_000];

/// A policy of `n` rules, a quarter of each kind: exact `tls_passthrough`, wildcard
/// `tls_passthrough`, `http` with a method and a path prefix, `tcp` /24s.
fn policy(n: usize) -> CompiledPolicy {
    let rules = (0..n)
        .map(|i| {
            let host = |s: String| HostPattern::parse(&s).expect("valid pattern");
            let spec = match i % 4 {
                0 => RuleSpec::TlsPassthrough(HostRule {
                    hostnames: vec![host(format!("svc{i}.zone{}.example.com", i % 97))],
                    ports: Ports::Numbers(vec![443]),
                    ..HostRule::default()
                }),
                1 => RuleSpec::TlsPassthrough(HostRule {
                    hostnames: vec![host(format!("*.w{i}.example.net"))],
                    ports: Ports::All,
                    ..HostRule::default()
                }),
                2 => RuleSpec::Http(HostRule {
                    hostnames: vec![host(format!("api{i}.example.org"))],
                    ports: Ports::Numbers(vec![80]),
                    methods: vec![http::Method::GET],
                    path_prefixes: vec![format!("/v{}/", i % 5)],
                    ..HostRule::default()
                }),
                _ => RuleSpec::Tcp(TcpRule {
                    cidrs: vec![
                        format!("10.{}.{}.0/24", (i >> 8) & 255, i & 255)
                            .parse()
                            .expect("valid cidr"),
                    ],
                    ports: Ports::Numbers(vec![5432]),
                }),
            };
            Rule { spec, mode: None }
        })
        .collect();
    let model = Policy {
        name: Arc::from("bench"),
        mode: Mode::Enforce,
        rules,
    };
    CompiledPolicy::compile(&model).expect("bench policy compiles")
}

/// Owned query inputs (the `Query` borrows them).
struct Case {
    dst: SocketAddr,
    kind: u8,
    name: String,
    path: String,
}

impl Case {
    fn query(&self) -> Query<'_> {
        let traffic = match self.kind {
            0..=2 => Traffic::Tls {
                sni: Some(&self.name),
                interception: false,
            },
            3 => Traffic::Http {
                authority: &self.name,
                method: "GET",
                path: &self.path,
            },
            _ => Traffic::Opaque,
        };
        Query {
            dst: self.dst,
            traffic,
        }
    }
}

/// 1,024 queries over the rule set (hits spread over all rules, plus misses).
fn cases(n: usize) -> Vec<Case> {
    let pick = |k: usize, rem: usize| {
        let i = (k * 7919) % n.max(4);
        i - i % 4 + rem
    };
    (0..1024)
        .map(|k| {
            let dst = |ip: String, port: u16| SocketAddr::new(ip.parse().expect("ip"), port);
            match k % 6 {
                0 => {
                    let i = pick(k, 0);
                    Case {
                        dst: dst("198.51.100.1".into(), 443),
                        kind: 0,
                        name: format!("svc{i}.zone{}.example.com", i % 97),
                        path: String::new(),
                    }
                }
                1 => Case {
                    dst: dst("198.51.100.1".into(), 443),
                    kind: 1,
                    name: format!("host{k}.w{}.example.net", pick(k, 1)),
                    path: String::new(),
                },
                2 => Case {
                    dst: dst("198.51.100.1".into(), 443),
                    kind: 2,
                    name: format!("unknown{k}.example.com"),
                    path: String::new(),
                },
                3 => {
                    let i = pick(k, 2);
                    Case {
                        dst: dst("198.51.100.1".into(), 80),
                        kind: 3,
                        name: format!("api{i}.example.org"),
                        path: format!("/v{}/items/{k}", i % 5),
                    }
                }
                4 => {
                    let i = pick(k, 3);
                    Case {
                        dst: dst(format!("10.{}.{}.9", (i >> 8) & 255, i & 255), 5432),
                        kind: 4,
                        name: String::new(),
                        path: String::new(),
                    }
                }
                _ => Case {
                    dst: dst("192.0.2.1".into(), 22),
                    kind: 5,
                    name: String::new(),
                    path: String::new(),
                },
            }
        })
        .collect()
}

/// p50/p99 in ns of single decisions.
fn percentiles(p: &CompiledPolicy, cases: &[Case], samples: usize) -> (u64, u64) {
    let queries: Vec<Query<'_>> = cases.iter().map(Case::query).collect();
    for q in &queries {
        black_box(p.decide(black_box(q)));
    }
    let mut ns: Vec<u64> = Vec::with_capacity(samples);
    for s in 0..samples {
        let q = &queries[s % queries.len()];
        let t = Instant::now();
        let d = p.decide(black_box(q));
        let e = t.elapsed();
        black_box(d);
        ns.push(u64::try_from(e.as_nanos()).unwrap_or(u64::MAX));
    }
    ns.sort_unstable();
    (ns[ns.len() / 2], ns[ns.len() * 99 / 100])
}

fn main() {
    let policies: Vec<(usize, CompiledPolicy, Vec<Case>)> =
        SIZES.iter().map(|&n| (n, policy(n), cases(n))).collect();
    println!("policy decision latency (single calls, clock read included):");
    println!("{:>8} {:>10} {:>10}", "rules", "p50 ns", "p99 ns");
    for (n, p, cases) in &policies {
        let (p50, p99) = percentiles(p, cases, 200_000);
        println!("{n:>8} {p50:>10} {p99:>10}");
    }

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("decide");
    for (n, p, cases) in &policies {
        let queries: Vec<Query<'_>> = cases.iter().map(Case::query).collect();
        let mut k = 0usize;
        g.bench_function(format!("{n}_rules_mix"), |b| {
            b.iter(|| {
                k = (k + 1) % queries.len();
                p.decide(black_box(&queries[k]))
            })
        });
    }
    g.finish();
    c.final_summary();
}
