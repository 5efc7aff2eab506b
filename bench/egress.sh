#!/usr/bin/env bash
# Egress benchmark: actorgate's PEP vs Envoy 1.40 terminating CONNECT over mTLS, one run.
#
#   bench/egress.sh                       # defaults below; env vars override
#   ROUNDS=3 DURATION=10 CONC=16 bench/egress.sh
#
# Targets (all terminate CONNECT over mTLS with a required client certificate from one dev CA):
# * actorgate-h1: actorgate's PEP, one new TLS connection + HTTP/1.1 CONNECT per tunnel (exactly
#   what upstream atunnel sends); identity from the actor certificate, actor liveness from the
#   static directory (cached), a files policy with a `tcp` rule allowing the sink;
# * actorgate-h2: the same PEP, CONNECT streams multiplexed over h2 connections (one per worker);
# * envoy: Envoy 1.40 per ../shared/reference/envoy/03-connect-terminate-mtls.yaml (ORIGINAL_DST
#   on the CONNECT authority, SAN prefix check) without the RBAC filter;
# * envoy+rbac: the same Envoy with the reference's RBAC filter (principal prefix of the actor
#   SPIFFE IDs) standing in for policy; envoy-h2 / envoy+rbac-h2 over h2 where measured.
#
# Fairness, as run here:
# * one client (egress-pep/examples/tunnel_bench.rs, release) and one sink (the same binary) for
#   every target; the client speaks byte-identical CONNECTs to all targets;
# * every PEP gets the machine's core count as worker threads (actorgate: tokio workers = nproc;
#   Envoy: --concurrency nproc); logging at warn/error, access logs and audit file off for both
#   (actorgate still counts and keeps its recent-decision ring);
# * TLS 1.3 for every target (Envoy's reference sets TLSv1_3 as minimum; rustls prefers 1.3), the
#   same certificates (P-256), client session resumption as rustls does it by default for all;
# * nothing is pinned: on 2 cores client, PEP and sink share both cores for every target alike;
#   targets alternate round by round so drift hits all alike; errors are printed, so a target
#   cannot look fast by failing.
#
# Prints, side by side with ratios: one-stream bulk throughput (Gbit/s) and PEP CPU-seconds per
# GiB; new tunnels/s at CONC concurrent with full handshakes, p50/p99 setup latency and PEP CPU per
# tunnel; resident memory per idle tunnel at 1,000 and 10,000 tunnels; the policy micro-benchmark
# (decision p50/p99 at 10, 1,000 and 10,000 rules).
# Bars (issue 11): CPU/GiB <= 0.75x Envoy's; tunnels/s >= 1.3x envoy+rbac (h1) and >= 2x with h2;
# <= 20 KiB per idle tunnel with 10,000 held; decision p50 <= 1 us at 10,000 rules.
#
# Interception (issue 12), same run: intercepted HTTPS requests/s and p99 through actorgate's PEP
# (an `https` rule for origin.bench, leaves minted by its interception CA, re-originated TLS
# verified against the origin's CA) versus Envoy 1.40 as the same man-in-the-middle (CONNECT
# terminated over mTLS, the tunnel handed to an internal listener that terminates TLS with a fixed
# leaf for origin.bench from the same interception CA, routes by domain, and re-originates TLS to
# the origin with the protocol the actor spoke). Same client (tunnel_bench https: one
# atunnel-style tunnel per connection, TLS inside), same origin (nginx over TLS 1.3, h1 + h2,
# `GET /` -> 6 bytes), alternating: HTTP/1.1 keep-alive (CONC connections), h2 (CONC streams over
# CONC/8 connections), and new intercepted connections/s (leaf cached; one request each).
# Bars: requests/s >= 1.2x Envoy's and p99 <= Envoy's, for both protocols.
#
# Actor-to-actor and credential injection (issue 14), same run, actorgate alone (nothing to
# compare with upstream, which has neither):
# * actor-to-actor: cleartext HTTP/1.1 keep-alive requests (CONC connections) from an actor's
#   tunnels through the PEP, which forwards them to ingress over mTLS as a trusted peer
#   (`egress.actor_forwarding`, an `actors` rule), versus the same requests sent straight to
#   ingress's HTTP listener; ingress routes both to the same worker (nginx, `GET /` -> 6 bytes).
#   The ratio is the cost of the egress hop.
# * injection: intercepted HTTPS HTTP/1.1 keep-alive requests carrying `authorization:
#   placeholder`, to an `https` rule whose effect replaces it with a secret from the files
#   provider (warm cache) versus a rule without effects (same origin, another port). Bar: at most
#   5% fewer requests/s with injection.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONC=${CONC:-16}
HOLD=${HOLD:-"1000 10000"}
CORES=$(nproc)
WORK=${WORK:-$(mktemp -d /tmp/actorgate-egress-bench.XXXXXX)}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
PORT_SINK=18280 PORT_PEP=18281 PORT_ENVOY=18282 PORT_ENVOY_RBAC=18283 PORT_ADMIN=18290
PORT_ENVOY_ADMIN=18291 PORT_ENVOY_RBAC_ADMIN=18292
PORT_ORIGIN=18284 PORT_ENVOY_MITM=18285 PORT_ENVOY_MITM_ADMIN=18293
PORT_ORIGIN_INJECT=18286 PORT_INGRESS_HTTP=18287 PORT_INGRESS_HTTPS=18288 PORT_WORKER=18289
ACTOR_HOST=server.bench.actors.resources.substrate.ate.dev
ORIGIN_NAME=origin.bench

log() { echo "bench: $*" >&2; }
# Open files: every held h1 tunnel costs the PEP two descriptors (actor side, sink side). Raise the
# soft limit to the hard one; where the hard limit is too low for 10,000 h1 tunnels (containers
# without CAP_SYS_RESOURCE), the h1 hold is capped below it and the table says so.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
FD_LIMIT=$(ulimit -n)

# --- tools -------------------------------------------------------------------------------------
# shellcheck source=bench/envoy.sh
. bench/envoy.sh

log "building actorgate and the tunnel client (release)"
cargo build --release --quiet
cargo build --release --quiet -p egress-pep --example tunnel_bench
AG="$TARGET_DIR/release/actorgate"
TB="$TARGET_DIR/release/examples/tunnel_bench"

# --- certificates (the project's dev CA) -------------------------------------------------------
PKI="$WORK/pki"
"$AG" dev-ca init --dir "$PKI" >/dev/null
"$AG" dev-ca server --ca-dir "$PKI" --name pep --dns localhost --ip 127.0.0.1 >/dev/null
"$AG" dev-ca actor --ca-dir "$PKI" --actor bench/client >/dev/null
# The PEP's identity towards ingress (actor forwarding): a component certificate.
"$AG" dev-ca component --ca-dir "$PKI" --namespace ate-system --service-account actorgate-pep >/dev/null
mkdir -p "$WORK/secrets/bench"
printf 'bench-secret-token\n' >"$WORK/secrets/bench/token"
CLIENT="$WORK/client"
mkdir -p "$CLIENT"
cp "$PKI/ca.crt" "$CLIENT/ca.crt"
cp "$PKI/bench.client.crt" "$CLIENT/client.crt"
cp "$PKI/bench.client.key" "$CLIENT/client.key"
# Interception: the origin's own CA and certificate; the interception CA (actorgate mints from
# it; Envoy's fixed leaf for the name comes from it too, so the client trusts one CA for both).
"$AG" dev-ca init --dir "$WORK/origin" >/dev/null
"$AG" dev-ca server --ca-dir "$WORK/origin" --name origin --dns $ORIGIN_NAME >/dev/null
"$AG" dev-ca init --dir "$WORK/intercept" >/dev/null
"$AG" dev-ca server --ca-dir "$WORK/intercept" --name leaf --dns $ORIGIN_NAME >/dev/null

# --- processes ---------------------------------------------------------------------------------
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$TB" sink 127.0.0.1:$PORT_SINK 2>"$WORK/sink.log" & pids+=($!)

cat >"$WORK/policy.yaml" <<EOF
policies:
- name: bench
  selector: {atespace: bench}
  rules:
  - tcp: {cidrs: [127.0.0.1/32], ports: [$PORT_SINK]}
  - https: {hostnames: [$ORIGIN_NAME], ports: [$PORT_ORIGIN]}
  - https:
      hostnames: [$ORIGIN_NAME]
      ports: [$PORT_ORIGIN_INJECT]
      effects: {replace_headers: [{header: authorization, prefix: 'Bearer ', credential_uri: 'ate-secret://local/bench/token'}]}
  - actors: {targets: [bench/server]}
EOF
cat >"$WORK/actorgate.yaml" <<EOF
logging: {level: warn}
admin: {listen: 127.0.0.1:$PORT_ADMIN}
grpc: {listen: 127.0.0.1:$((PORT_ADMIN + 1)), extproc: false, resolve_route: false}
ingress:
  http: {listen: 127.0.0.1:$PORT_INGRESS_HTTP}
  https:
    listen: 127.0.0.1:$PORT_INGRESS_HTTPS
    tls: {cert_file: $PKI/pep.crt, key_file: $PKI/pep.key, client_ca_file: $PKI/ca.crt, client_auth: optional}
    trusted_peers: ['spiffe://substrate-actor.local/ns/ate-system/sa/actorgate-pep']
directory:
  static:
    actors:
    - {atespace: bench, name: client, endpoint: '127.0.0.1:1'}
    - {atespace: bench, name: server, endpoint: '127.0.0.1:$PORT_WORKER'}
egress:
  listen: 127.0.0.1:$PORT_PEP
  tls: {cert_file: $PKI/pep.crt, key_file: $PKI/pep.key, client_ca_file: $PKI/ca.crt}
  policy: {source: files, files: [$WORK/policy.yaml]}
  limits: {idle_timeout: 300s}
  resolver: {system: false, static: {$ORIGIN_NAME: [127.0.0.1]}}
  guard: {exempt: [127.0.0.1/32]}
  interception:
    ca_cert_file: $WORK/intercept/ca.crt
    ca_key_file: $WORK/intercept/ca.key
    upstream: {system_roots: false, extra_ca_files: [$WORK/origin/ca.crt]}
  actor_forwarding:
    ingress: 127.0.0.1:$PORT_INGRESS_HTTPS
    server_name: localhost
    cert_file: $PKI/ate-system.actorgate-pep.crt
    key_file: $PKI/ate-system.actorgate-pep.key
  credentials:
    providers: [{class: local, files: {dir: $WORK/secrets}}]
EOF
# Each PEP can be (re)started fresh: the idle-tunnel measurement wants a process that has not
# served anything yet (freed memory would be reused and hide what tunnels cost).
start_actorgate() {
  "$AG" serve --config "$WORK/actorgate.yaml" 2>>"$WORK/actorgate.log" & pids+=($!); PID_PEP=$!
}
start_envoy() {
  "$ENVOY" -c "$WORK/envoy.yaml" --concurrency "$CORES" --log-level error --disable-hot-restart \
    --base-id $((RANDOM % 10000 + 100)) 2>>"$WORK/envoy.log" & pids+=($!); PID_ENVOY=$!
}
start_envoy_rbac() {
  "$ENVOY" -c "$WORK/envoy-rbac.yaml" --concurrency "$CORES" --log-level error --disable-hot-restart \
    --base-id $((RANDOM % 10000 + 20000)) 2>>"$WORK/envoy-rbac.log" & pids+=($!); PID_ENVOY_RBAC=$!
}
start_actorgate

# The CONNECT listener's head, shared by every Envoy here: mTLS with a required client certificate
# from the dev CA whose URI SAN is an actor's (the reference's check).
envoy_connect_listener() { # name port
  cat <<EOF
  - name: $1
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    per_connection_buffer_limit_bytes: 1048576
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_params: {tls_minimum_protocol_version: TLSv1_3}
            tls_certificates:
            - certificate_chain: {filename: $PKI/pep.crt}
              private_key: {filename: $PKI/pep.key}
            validation_context:
              trusted_ca: {filename: $PKI/ca.crt}
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {prefix: "spiffe://substrate-actor.local/"}
      filters:
EOF
}

envoy_config() { # port admin_port rbac(yes|no)
  cat <<EOF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $2}}}
static_resources:
  listeners:
$(envoy_connect_listener connect_orig_dst "$1")
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: connect_orig_dst
          codec_type: AUTO
          http2_protocol_options: {allow_connect: true}
          upgrade_configs: [{upgrade_type: CONNECT}]
          forward_client_cert_details: SANITIZE_SET
          set_current_client_cert_details: {uri: true, subject: true}
          route_config:
            name: connect_routes
            virtual_hosts:
            - name: connect
              domains: ["*"]
              routes:
              - match: {connect_matcher: {}}
                route:
                  cluster: connect_original_dst
                  timeout: 0s
                  upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]
          http_filters:
EOF
  if [ "$3" = yes ]; then cat <<EOF
          - name: envoy.filters.http.rbac
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  actors:
                    permissions: [{any: true}]
                    principals:
                    - authenticated: {principal_name: {prefix: "spiffe://substrate-actor.local/ateom-for-actor/bench/"}}
EOF
  fi
  cat <<EOF
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: connect_original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 2s
    original_dst_lb_config: {use_http_header: true, http_header_name: ":authority"}
    # Envoy's default circuit breakers allow 1,024 upstream connections per cluster: lifted, so
    # Envoy can hold as many tunnels as actorgate (which has no such default).
    circuit_breakers:
      thresholds: [{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000}]
EOF
}
# Envoy as the man-in-the-middle: CONNECT over mTLS (as above, no RBAC) → an internal listener
# that terminates TLS with the fixed leaf and proxies HTTP to the origin over TLS (domain routing
# as the policy; the upstream protocol follows the downstream one, as actorgate's does).
envoy_mitm_config() {
  cat <<EOF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $PORT_ENVOY_MITM_ADMIN}}}
bootstrap_extensions:
- name: envoy.bootstrap.internal_listener
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener
static_resources:
  listeners:
$(envoy_connect_listener connect "$PORT_ENVOY_MITM")
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: connect
          codec_type: AUTO
          http2_protocol_options: {allow_connect: true}
          upgrade_configs: [{upgrade_type: CONNECT}]
          route_config:
            name: connect_routes
            virtual_hosts:
            - name: connect
              domains: ["*"]
              routes:
              - match: {connect_matcher: {}}
                route:
                  cluster: mitm
                  timeout: 0s
                  upgrade_configs: [{upgrade_type: CONNECT, connect_config: {}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  - name: mitm_tls
    internal_listener: {}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: ["h2", "http/1.1"]
            tls_params: {tls_minimum_protocol_version: TLSv1_3}
            tls_certificates:
            - certificate_chain: {filename: $WORK/intercept/leaf.crt}
              private_key: {filename: $WORK/intercept/leaf.key}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mitm
          codec_type: AUTO
          route_config:
            name: mitm_routes
            virtual_hosts:
            - name: origin
              domains: ["$ORIGIN_NAME", "$ORIGIN_NAME:$PORT_ORIGIN"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: origin}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: mitm
    connect_timeout: 2s
    load_assignment:
      cluster_name: mitm
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {envoy_internal_address: {server_listener_name: mitm_tls}}}
    circuit_breakers:
      thresholds: [{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000}]
  - name: origin
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: origin
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $PORT_ORIGIN}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: $ORIGIN_NAME
        common_tls_context:
          # Envoy's client default stops at TLS 1.2; the origin (and actorgate) speak 1.3.
          tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3}
          validation_context:
            trusted_ca: {filename: $WORK/origin/ca.crt}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {exact: $ORIGIN_NAME}
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {http_protocol_options: {}, http2_protocol_options: {}}
    circuit_breakers:
      thresholds: [{max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000}]
EOF
}
envoy_mitm_config >"$WORK/envoy-mitm.yaml"
"$ENVOY" -c "$WORK/envoy-mitm.yaml" --concurrency "$CORES" --log-level error --disable-hot-restart \
  --base-id $((RANDOM % 10000 + 40000)) 2>>"$WORK/envoy-mitm.log" & pids+=($!); PID_ENVOY_MITM=$!

# The origin: nginx over TLS 1.3, HTTP/1.1 and h2 (ALPN) on one port.
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
user root;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log error;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-tmp;
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$PORT_ORIGIN ssl http2;
    listen 127.0.0.1:$PORT_ORIGIN_INJECT ssl http2;
    ssl_certificate $WORK/origin/origin.crt;
    ssl_certificate_key $WORK/origin/origin.key;
    ssl_protocols TLSv1.3;
    http2_max_concurrent_streams 1024;
    location / { return 200 "hello\n"; }
  }
  server {
    listen 127.0.0.1:$PORT_WORKER;
    location / { return 200 "hello\n"; }
  }
}
EOF
mkdir -p "$WORK/nginx-tmp"
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" 2>>"$WORK/nginx-error.log" & pids+=($!)

envoy_config $PORT_ENVOY $PORT_ENVOY_ADMIN no >"$WORK/envoy.yaml"
envoy_config $PORT_ENVOY_RBAC $PORT_ENVOY_RBAC_ADMIN yes >"$WORK/envoy-rbac.yaml"
start_envoy
start_envoy_rbac

declare -A PORT=([actorgate-h1]=$PORT_PEP [actorgate-h2]=$PORT_PEP [envoy]=$PORT_ENVOY [envoy-h2]=$PORT_ENVOY
  [envoy+rbac]=$PORT_ENVOY_RBAC [envoy+rbac-h2]=$PORT_ENVOY_RBAC)
declare -A PROTO=([actorgate-h1]=h1 [actorgate-h2]=h2 [envoy]=h1 [envoy-h2]=h2 [envoy+rbac]=h1 [envoy+rbac-h2]=h2)
declare -A PID
set_pids() {
  PID=([actorgate-h1]=$PID_PEP [actorgate-h2]=$PID_PEP [envoy]=$PID_ENVOY [envoy-h2]=$PID_ENVOY
    [envoy+rbac]=$PID_ENVOY_RBAC [envoy+rbac-h2]=$PID_ENVOY_RBAC)
}
set_pids
declare -A STARTER=([actorgate-h1]=start_actorgate [actorgate-h2]=start_actorgate [envoy]=start_envoy
  [envoy-h2]=start_envoy [envoy+rbac]=start_envoy_rbac [envoy+rbac-h2]=start_envoy_rbac)
restart() { # target: stop its process, start a fresh one, wait until its port accepts
  local old=${PID[$1]}
  kill "$old" 2>/dev/null || true; wait "$old" 2>/dev/null || true
  ${STARTER[$1]}; set_pids
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/${PORT[$1]}") 2>/dev/null && break; sleep 0.1; done
  sleep 0.5
}
TARGETS=(actorgate-h1 actorgate-h2 envoy envoy-h2 envoy+rbac envoy+rbac-h2)

for t in "${TARGETS[@]}"; do
  ok=
  for _ in $(seq 1 100); do
    if "$TB" setup 127.0.0.1:${PORT[$t]} localhost "$CLIENT" 127.0.0.1:$PORT_SINK 1 ${PROTO[$t]} 1 2>/dev/null \
        | grep -q 'errors 0' ; then ok=1; break; fi
    sleep 0.2
  done
  [ -n "$ok" ] || { log "$t does not open tunnels; logs in $WORK"; tail -5 "$WORK"/*.log >&2; exit 1; }
done

# The man-in-the-middle targets answer an intercepted request before the rounds start.
declare -A MITM_PORT=([actorgate-mitm]=$PORT_PEP [envoy-mitm]=$PORT_ENVOY_MITM)
MITM_TARGETS=(actorgate-mitm envoy-mitm)
mitm() { # target mode(https|https-conns) proto secs conc
  "$TB" "$2" 127.0.0.1:${MITM_PORT[$1]} localhost "$CLIENT" 127.0.0.1:$PORT_ORIGIN "$4" "$3" "$5" \
    "$ORIGIN_NAME:$PORT_ORIGIN" "$WORK/intercept/ca.crt"
}
for t in "${MITM_TARGETS[@]}"; do
  ok=
  for _ in $(seq 1 100); do
    if mitm "$t" https h1 1 1 2>"$WORK/mitm-check.err" | grep -q 'errors 0'; then ok=1; break; fi
    sleep 0.2
  done
  [ -n "$ok" ] || { log "$t does not answer intercepted requests ($(head -1 "$WORK/mitm-check.err")); logs in $WORK"; tail -5 "$WORK"/*.log >&2; exit 1; }
done

# Actor-to-actor (via the PEP and ingress, or straight to ingress) and injection (an https rule
# with or without a credential effect): each answers before the rounds start.
a2a() { # via(pep|direct) secs conc
  if [ "$1" = pep ]; then
    "$TB" http 127.0.0.1:$PORT_PEP localhost "$CLIENT" 127.0.0.1:$PORT_INGRESS_HTTP "$2" "$3" "$ACTOR_HOST"
  else
    "$TB" plain-http 127.0.0.1:$PORT_INGRESS_HTTP "$2" "$3" "$ACTOR_HOST"
  fi
}
inject() { # with(yes|no) secs conc
  local port=$PORT_ORIGIN; [ "$1" = yes ] && port=$PORT_ORIGIN_INJECT
  BENCH_HEADER='authorization: placeholder' "$TB" https 127.0.0.1:$PORT_PEP localhost "$CLIENT" \
    127.0.0.1:$port "$2" h1 "$3" "$ORIGIN_NAME:$port" "$WORK/intercept/ca.crt"
}
for check in "a2a pep" "a2a direct" "inject yes" "inject no"; do
  ok=
  for _ in $(seq 1 100); do
    if $check 1 1 2>"$WORK/a2a-check.err" | grep -q 'errors 0'; then ok=1; break; fi
    sleep 0.2
  done
  [ -n "$ok" ] || { log "$check fails ($(head -1 "$WORK/a2a-check.err")); logs in $WORK"; tail -5 "$WORK"/*.log >&2; exit 1; }
done

# --- load --------------------------------------------------------------------------------------
# shellcheck source=bench/measure.sh
. bench/measure.sh

# Idle tunnels first, while every PEP is fresh (a process that already served the load rounds
# reuses freed memory, which would hide what tunnels cost): resident memory before and while
# holding N tunnels, once per target.
declare -A MEM
for n in $HOLD; do
  for t in "${TARGETS[@]}"; do
    restart "$t"
    p=${PID[$t]}
    want=$n
    if [ "${PROTO[$t]}" = h1 ] && [ $((2 * n + 2000)) -gt "$FD_LIMIT" ]; then
      want=$(( (FD_LIMIT - 2000) / 2 ))
      log "$t: open-file limit $FD_LIMIT allows $want h1 tunnels, not $n"
    fi
    r0=$(rss_kib "$p")
    fifo="$WORK/hold.$$"; rm -f "$fifo"; mkfifo "$fifo"
    "$TB" hold 127.0.0.1:${PORT[$t]} localhost "$CLIENT" 127.0.0.1:$PORT_SINK "$want" ${PROTO[$t]} <"$fifo" >"$WORK/hold.out" 2>"$WORK/hold.err" &
    hp=$!
    exec 9>"$fifo"
    for _ in $(seq 1 1200); do grep -q held "$WORK/hold.out" && break; kill -0 $hp 2>/dev/null || break; sleep 0.1; done
    if grep -q held "$WORK/hold.out"; then
      sleep 1
      r1=$(rss_kib "$p")
      MEM[$t,$n]=$(awk -v a="$r0" -v b="$r1" -v n="$want" 'BEGIN {printf "%.1f", (b - a) / n}')
      [ "$want" = "$n" ] || MEM[$t,$n]="${MEM[$t,$n]}@$want"
    else
      MEM[$t,$n]=nan
      log "WARNING $t: could not hold $n tunnels: $(tail -1 "$WORK/hold.err")"
    fi
    log "$t holding $n: ${MEM[$t,$n]} KiB/tunnel"
    exec 9>&-
    wait $hp 2>/dev/null || true
    rm -f "$fifo"
    sleep 2
  done
done

for t in actorgate-h1 envoy envoy+rbac; do restart "$t"; done

for round in $(seq 1 "$ROUNDS"); do
  order=("${TARGETS[@]:$((round % ${#TARGETS[@]}))}" "${TARGETS[@]:0:$((round % ${#TARGETS[@]}))}")
  for t in "${order[@]}"; do
    p=${PID[$t]}
    c0=$(cpu_ticks "$p")
    out=$("$TB" bulk 127.0.0.1:${PORT[$t]} localhost "$CLIENT" 127.0.0.1:$PORT_SINK "$DURATION" ${PROTO[$t]})
    c1=$(cpu_ticks "$p")
    bytes=$(field bytes <<<"$out") gbps=$(field gbps <<<"$out")
    cpu_gib=$(awk -v c=$((c1 - c0)) -v t="$TICK" -v b="$bytes" 'BEGIN {printf "%.3f", c / t / (b / 1073741824)}')
    log "round $round $t bulk: $gbps Gbit/s, $cpu_gib CPU-s/GiB"
    add "$t,gbps" "$gbps"; add "$t,cpu_gib" "$cpu_gib"

    c0=$(cpu_ticks "$p")
    out=$("$TB" setup 127.0.0.1:${PORT[$t]} localhost "$CLIENT" 127.0.0.1:$PORT_SINK "$DURATION" ${PROTO[$t]} "$CONC")
    c1=$(cpu_ticks "$p")
    n=$(field tunnels <<<"$out") rate=$(field per_sec <<<"$out") p50=$(field p50_ms <<<"$out") p99=$(field p99_ms <<<"$out")
    errs=$(field errors <<<"$out")
    [ "$errs" = 0 ] || log "WARNING $t: $errs failed tunnels during setup"
    cpu_t=$(awk -v c=$((c1 - c0)) -v t="$TICK" -v n="$n" 'BEGIN {printf "%.1f", c / t / n * 1e6}')
    log "round $round $t setup: $rate tunnels/s p50 ${p50}ms p99 ${p99}ms, $cpu_t CPU-us/tunnel"
    add "$t,rate" "$rate"; add "$t,p50" "$p50"; add "$t,p99" "$p99"; add "$t,cpu_t" "$cpu_t"
  done
done

# Interception: requests/s and p99 (h1 keep-alive, h2), new intercepted connections/s; PEP CPU
# per request. The PEP processes keep serving from the rounds above (leaf cached, as for Envoy's
# fixed leaf).
declare -A PID_MITM=([actorgate-mitm]=$PID_PEP [envoy-mitm]=$PID_ENVOY_MITM)
for round in $(seq 1 "$ROUNDS"); do
  order=("${MITM_TARGETS[@]:$((round % 2))}" "${MITM_TARGETS[@]:0:$((round % 2))}")
  for t in "${order[@]}"; do
    p=${PID_MITM[$t]}
    for kind in h1 h2 conns; do
      if [ $kind = conns ]; then mode=https-conns proto=h1; else mode=https proto=$kind; fi
      c0=$(cpu_ticks "$p")
      out=$(mitm "$t" $mode $proto "$DURATION" "$CONC" 2>>"$WORK/mitm.err")
      c1=$(cpu_ticks "$p")
      n=$(field requests <<<"$out") rate=$(field per_sec <<<"$out") p50=$(field p50_ms <<<"$out") p99=$(field p99_ms <<<"$out")
      errs=$(field errors <<<"$out")
      [ "$errs" = 0 ] || log "WARNING $t $kind: $errs failed requests"
      cpu_r=$(awk -v c=$((c1 - c0)) -v t="$TICK" -v n="$n" 'BEGIN {printf "%.1f", (n > 0) ? c / t / n * 1e6 : 0}')
      log "round $round $t $kind: $rate/s p50 ${p50}ms p99 ${p99}ms, $cpu_r CPU-us each"
      add "$t,$kind,rate" "$rate"; add "$t,$kind,p50" "$p50"; add "$t,$kind,p99" "$p99"; add "$t,$kind,cpu" "$cpu_r"
    done
  done
done

# Actor-to-actor and injection: requests/s and p99, PEP process CPU per request (for a2a the
# process is ingress and PEP together: both hops are in it), alternating.
A2A=("a2a pep" "a2a direct" "inject yes" "inject no")
for round in $(seq 1 "$ROUNDS"); do
  order=("${A2A[@]:$((round % 4))}" "${A2A[@]:0:$((round % 4))}")
  for run in "${order[@]}"; do
    key=${run// /-}
    c0=$(cpu_ticks "$PID_PEP")
    out=$($run "$DURATION" "$CONC" 2>>"$WORK/a2a.err")
    c1=$(cpu_ticks "$PID_PEP")
    n=$(field requests <<<"$out") rate=$(field per_sec <<<"$out") p50=$(field p50_ms <<<"$out") p99=$(field p99_ms <<<"$out")
    errs=$(field errors <<<"$out")
    [ "$errs" = 0 ] || log "WARNING $run: $errs failed requests"
    cpu_r=$(awk -v c=$((c1 - c0)) -v t="$TICK" -v n="$n" 'BEGIN {printf "%.1f", (n > 0) ? c / t / n * 1e6 : 0}')
    log "round $round $run: $rate/s p50 ${p50}ms p99 ${p99}ms, $cpu_r CPU-us each"
    add "$key,rate" "$rate"; add "$key,p50" "$p50"; add "$key,p99" "$p99"; add "$key,cpu" "$cpu_r"
  done
done

# Policy micro-benchmark (decision latency, p50/p99).
log "policy micro-benchmark"
# The first table of egress-pep/benches/policy.rs (single decisions, p50/p99); criterion's
# averages follow in its own output and are not repeated here.
POLICY_OUT=$(cargo bench --quiet -p egress-pep --bench policy -- --warm-up-time 1 --measurement-time 2 2>/dev/null \
  | sed -n '/policy decision latency/,/^ *10000 /p')

# --- report ------------------------------------------------------------------------------------
echo
echo "egress benchmark: $CORES cores, $ROUNDS rounds x ${DURATION}s, Envoy $ENVOY_VERSION, setup concurrency $CONC"
printf '%-16s %10s %12s %12s %10s %10s %14s\n' target "Gbit/s" "CPU-s/GiB" "tunnels/s" "p50 ms" "p99 ms" "CPU-us/tunnel"
for t in "${TARGETS[@]}"; do
  printf '%-16s %10.3f %12.3f %12.0f %10.3f %10.3f %14.1f\n' "$t" "$(mean "$t,gbps")" "$(mean "$t,cpu_gib")" \
    "$(mean "$t,rate")" "$(mean "$t,p50")" "$(mean "$t,p99")" "$(mean "$t,cpu_t")"
done
echo
ratio() { awk -v a="$(mean "$1")" -v b="$(mean "$2")" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }
echo "ratios (bars in brackets):"
echo "  CPU-s/GiB   actorgate-h1 / envoy          $(ratio actorgate-h1,cpu_gib envoy,cpu_gib)   [<= 0.75]"
echo "  CPU-s/GiB   actorgate-h2 / envoy-h2       $(ratio actorgate-h2,cpu_gib envoy-h2,cpu_gib)"
echo "  Gbit/s      actorgate-h1 / envoy          $(ratio actorgate-h1,gbps envoy,gbps)"
echo "  tunnels/s   actorgate-h1 / envoy+rbac     $(ratio actorgate-h1,rate envoy+rbac,rate)   [>= 1.3]"
echo "  tunnels/s   actorgate-h2 / envoy+rbac     $(ratio actorgate-h2,rate envoy+rbac,rate)   [>= 2.0]"
echo "  tunnels/s   actorgate-h2 / envoy+rbac-h2  $(ratio actorgate-h2,rate envoy+rbac-h2,rate)"
echo "  p99 setup   actorgate-h1 / envoy+rbac     $(ratio actorgate-h1,p99 envoy+rbac,p99)"
echo
echo "resident memory per idle tunnel (KiB; RSS delta / tunnels; X@N: only N held, open-file limit $FD_LIMIT) [bar: <= 20 KiB, 10,000 held]:"
printf '%-16s' target; for n in $HOLD; do printf '%12s' "$n"; done; echo
for t in "${TARGETS[@]}"; do
  printf '%-16s' "$t"; for n in $HOLD; do printf '%12s' "${MEM[$t,$n]}"; done; echo
done
echo
echo "interception: intercepted HTTPS through the PEP vs Envoy as the same man-in-the-middle ($CONC concurrent; h2 over $(( CONC / 8 > 0 ? CONC / 8 : 1 )) connections; conns: a new connection per request, leaf cached)"
printf '%-16s %-6s %12s %10s %10s %12s\n' target load "per second" "p50 ms" "p99 ms" "PEP CPU-us"
for kind in h1 h2 conns; do
  for t in "${MITM_TARGETS[@]}"; do
    printf '%-16s %-6s %12.0f %10.3f %10.3f %12.1f\n' "$t" "$kind" "$(mean "$t,$kind,rate")" \
      "$(mean "$t,$kind,p50")" "$(mean "$t,$kind,p99")" "$(mean "$t,$kind,cpu")"
  done
done
echo "ratios (bars in brackets):"
echo "  requests/s  h1 actorgate / envoy   $(ratio actorgate-mitm,h1,rate envoy-mitm,h1,rate)   [>= 1.2]"
echo "  p99         h1 actorgate / envoy   $(ratio actorgate-mitm,h1,p99 envoy-mitm,h1,p99)   [<= 1.0]"
echo "  requests/s  h2 actorgate / envoy   $(ratio actorgate-mitm,h2,rate envoy-mitm,h2,rate)   [>= 1.2]"
echo "  p99         h2 actorgate / envoy   $(ratio actorgate-mitm,h2,p99 envoy-mitm,h2,p99)   [<= 1.0]"
echo "  conns/s     actorgate / envoy      $(ratio actorgate-mitm,conns,rate envoy-mitm,conns,rate)"
echo
echo "actor-to-actor and credential injection ($CONC keep-alive HTTP/1.1 connections; CPU: the actorgate process, PEP and ingress)"
printf '%-26s %12s %10s %10s %12s\n' load "per second" "p50 ms" "p99 ms" "CPU-us"
for run in a2a-pep a2a-direct inject-yes inject-no; do
  case $run in
    a2a-pep) what="actor -> PEP -> ingress";; a2a-direct) what="actor -> ingress";;
    inject-yes) what="intercepted, injected";; inject-no) what="intercepted, no effect";;
  esac
  printf '%-26s %12.0f %10.3f %10.3f %12.1f\n' "$what" "$(mean "$run,rate")" "$(mean "$run,p50")" \
    "$(mean "$run,p99")" "$(mean "$run,cpu")"
done
echo "ratios (bars in brackets):"
echo "  requests/s  via PEP / straight to ingress   $(ratio a2a-pep,rate a2a-direct,rate)"
echo "  p99         via PEP / straight to ingress   $(ratio a2a-pep,p99 a2a-direct,p99)"
echo "  requests/s  injected / without              $(ratio inject-yes,rate inject-no,rate)   [>= 0.95]"
echo "  p99         injected / without              $(ratio inject-yes,p99 inject-no,p99)"
echo
echo "policy decision latency [bar: p50 <= 1 us at 10,000 rules]:"
echo "$POLICY_OUT"
