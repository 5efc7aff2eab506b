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
CLIENT="$WORK/client"
mkdir -p "$CLIENT"
cp "$PKI/ca.crt" "$CLIENT/ca.crt"
cp "$PKI/bench.client.crt" "$CLIENT/client.crt"
cp "$PKI/bench.client.key" "$CLIENT/client.key"

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
EOF
cat >"$WORK/actorgate.yaml" <<EOF
logging: {level: warn}
admin: {listen: 127.0.0.1:$PORT_ADMIN}
grpc: {listen: 127.0.0.1:$((PORT_ADMIN + 1)), extproc: false, resolve_route: false}
ingress: {enabled: false}
directory:
  static:
    actors:
    - {atespace: bench, name: client, endpoint: '127.0.0.1:1'}
egress:
  listen: 127.0.0.1:$PORT_PEP
  tls: {cert_file: $PKI/pep.crt, key_file: $PKI/pep.key, client_ca_file: $PKI/ca.crt}
  policy: {source: files, files: [$WORK/policy.yaml]}
  limits: {idle_timeout: 300s}
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

envoy_config() { # port admin_port rbac(yes|no)
  cat <<EOF
admin: {address: {socket_address: {address: 127.0.0.1, port_value: $2}}}
static_resources:
  listeners:
  - name: connect_orig_dst
    address: {socket_address: {address: 127.0.0.1, port_value: $1}}
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

# --- load --------------------------------------------------------------------------------------
TICK=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
field() { awk -v k="$1" '{for (i = 1; i < NF; i++) if ($i == k) print $(i + 1)}'; }

declare -A SUM
add() { SUM[$1]=$(awk -v a="${SUM[$1]:-0}" -v b="$2" 'BEGIN {print a + b}'); }
mean() { awk -v s="${SUM[$1]:-0}" -v n="$ROUNDS" 'BEGIN {printf "%.3f", s / n}'; }

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
echo "policy decision latency [bar: p50 <= 1 us at 10,000 rules]:"
echo "$POLICY_OUT"
