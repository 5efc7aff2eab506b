//! ns/op of extraction (each addressing form) and of a full route that hits the route cache.
//! Run: `cargo bench -p routing-core`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use routing_core::directory::static_dir::{StaticDirectory, StaticDirectorySpec};
use routing_core::{Extractor, RequestMeta, Resolver, ResolverMetrics, ResolverSettings};

const HEADER: RequestMeta<'static> = RequestMeta {
    target_actor: Some("team-a/agent-7"),
    authority: Some("gateway.example.com:8080"),
};
const HOST: RequestMeta<'static> = RequestMeta {
    target_actor: None,
    authority: Some("agent-7.team-a.actors.resources.substrate.ate.dev:8080"),
};
const LEGACY: RequestMeta<'static> = RequestMeta {
    target_actor: None,
    authority: Some("agent-7.actors.resources.substrate.ate.dev"),
};

fn extraction(c: &mut Criterion) {
    let e = Extractor::default();
    let mut g = c.benchmark_group("extract");
    for (name, meta) in [("header", HEADER), ("host", HOST), ("legacy_host", LEGACY)] {
        g.bench_function(name, |b| b.iter(|| e.extract(black_box(&meta)).is_ok()));
    }
    g.finish();
}

fn cached_route(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let spec: StaticDirectorySpec = serde_saphyr::from_str(
        "actors:\n\
         - {atespace: team-a, name: agent-7, endpoint: '10.0.0.7:8080'}\n\
         - {atespace: default, name: agent-7, endpoint: '10.0.0.8:8080'}\n",
    )
    .unwrap();
    let dir = StaticDirectory::from_spec(spec.validate("").unwrap());
    // A TTL longer than the run, so every iteration is a cache hit.
    let settings = ResolverSettings {
        cache_ttl: std::time::Duration::from_secs(3600),
        ..ResolverSettings::default()
    };
    let r = Resolver::new(
        Arc::new(dir),
        settings,
        Extractor::default(),
        ResolverMetrics::new(),
    );
    // Warm the cache.
    for meta in [HEADER, HOST, LEGACY] {
        rt.block_on(r.route(&meta)).unwrap();
    }
    let mut g = c.benchmark_group("route_cached");
    for (name, meta) in [("header", HEADER), ("host", HOST), ("legacy_host", LEGACY)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                // A cache hit completes without suspending: poll it once, no runtime overhead.
                let route = r.route(black_box(&meta)).now_or_never().unwrap().unwrap();
                black_box(route.endpoint)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, extraction, cached_route);
criterion_main!(benches);
