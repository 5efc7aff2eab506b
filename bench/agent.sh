#!/usr/bin/env bash
# Tunnel agent benchmark (issue 13): an actor's own TCP connections straight to a server versus
# captured by the agent's rules and carried through agent + PEP, in both tunnel modes. One run.
#
#   sudo bench/agent.sh                          # defaults below; env vars override
#   ROUNDS=5 DURATION=8 HOLD=1000 bench/agent.sh
#   RTT_MS=1 bench/agent.sh                      # new-connection latency over a 1 ms round trip
#
# Topology (two network namespaces of the script's own, joined by a veth pair; nothing leaves
# the machine):
# * actor namespace: the client (egress-pep/examples/tunnel_bench.rs plain-*, release) and two
#   agents (`actorgate serve` with an `agent` section): `per-connection` (upstream atunnel's wire
#   behaviour: a TLS connection and CONNECT per captured connection) capturing on :15001 and
#   `pooled` (CONNECT streams over shared h2 connections) on :15002. The capture rules
#   (`actorgate agent install-rules --port`) point at one of them, or are removed for `direct`;
#   the agents' own connections carry SO_MARK 0x539, which the rules exclude.
# * PEP namespace: the sink (tunnel_bench sink: echo after 'e', else discard) and the PEP
#   (`actorgate serve` with `egress`: mTLS, the actor certificate, a files policy with a `tcp`
#   rule for the sink).
# Same client, same sink, same address (10.98.0.2) for all three; targets alternate round by
# round. Logging at warn, no audit file. Nothing is pinned: client, agent, PEP and sink share the
# machine's cores alike for every target.
#
# Prints, per target: one-connection bulk throughput (Gbit/s; only bytes the sink read) and its
# ratio to direct, agent and PEP CPU-seconds per GiB; new connections/s at CONC concurrent with
# p50/p99 of connect + first echoed byte and the latency added to direct's; agent resident
# memory per idle captured connection with HOLD held (fresh agents, RSS delta / HOLD).
# Bars: pooled adds at most a third of per-connection's added latency (p50); pooled bulk
# throughput >= per-connection's; <= 16 KiB of agent memory per idle captured connection.
#
# RTT_MS: the namespaces are joined by `tunnel_bench wire` (a userspace link through two TUN
# devices that delays each packet by RTT_MS / 2 each way; this kernel has no netem) instead of
# the veth pair, and only new-connection latency is measured: the round trips each target adds,
# as between an actor's node and the PEP, rather than the process wakeups of a delay-free veth.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONC=${CONC:-1}
HOLD=${HOLD:-1000}
RTT_MS=${RTT_MS:-}
CORES=$(nproc)
WORK=${WORK:-$(mktemp -d /tmp/actorgate-agent-bench.XXXXXX)}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
ACTOR_NS=agbench-actor-$$ PEP_NS=agbench-pep-$$
ACTOR_IP=10.98.0.1 PEP_IP=10.98.0.2
PORT_SINK=18380 PORT_PEP=18381 PORT_PEP_ADMIN=18390
PORT_PERCONN=15001 PORT_POOLED=15002 ADMIN_PERCONN=18391 ADMIN_POOLED=18392
MARK=0x539
SINK=$PEP_IP:$PORT_SINK
TARGETS=(direct per-connection pooled)

log() { echo "bench: $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "bench/agent.sh: needs root (network namespaces, nftables)" >&2; exit 1; }
command -v nft >/dev/null || { log "installing nftables"; apt-get install -y -qq nftables >/dev/null; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

log "building actorgate and the client (release)"
cargo build --release --quiet
cargo build --release --quiet -p egress-pep --example tunnel_bench
AG="$TARGET_DIR/release/actorgate"
TB="$TARGET_DIR/release/examples/tunnel_bench"

# --- namespaces and certificates ---------------------------------------------------------------
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns delete "$ACTOR_NS" 2>/dev/null || true
  ip netns delete "$PEP_NS" 2>/dev/null || true
}
trap cleanup EXIT
in_actor() { ip netns exec "$ACTOR_NS" "$@"; }
in_pep() { ip netns exec "$PEP_NS" "$@"; }
ip netns add "$ACTOR_NS"
ip netns add "$PEP_NS"
if [ -n "$RTT_MS" ]; then
  LINK_A="agb$$" LINK_P="agb$$"
  for ns in "$ACTOR_NS" "$PEP_NS"; do ip -n "$ns" tuntap add dev "agb$$" mode tun; done
  "$TB" wire "/var/run/netns/$ACTOR_NS" "agb$$" "/var/run/netns/$PEP_NS" "agb$$" \
    "$(awk -v r="$RTT_MS" 'BEGIN {printf "%d", r * 500}')" 2>"$WORK/wire.log" & pids+=($!)
  sleep 0.3
  kill -0 $! 2>/dev/null || { log "the wire did not start: $(cat "$WORK/wire.log")"; exit 1; }
else
  LINK_A="agb$$a" LINK_P="agb$$p"
  ip link add "$LINK_A" type veth peer name "$LINK_P"
  ip link set "$LINK_A" netns "$ACTOR_NS"
  ip link set "$LINK_P" netns "$PEP_NS"
fi
in_actor ip addr add $ACTOR_IP/24 dev "$LINK_A"
in_pep ip addr add $PEP_IP/24 dev "$LINK_P"
for ns in "$ACTOR_NS" "$PEP_NS"; do
  ip netns exec "$ns" ip link set lo up
  # Tens of thousands of short connections to one address per run: without these, TIME_WAIT
  # exhausts the ephemeral ports and connect() slows down for every target alike.
  ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
done
in_actor ip link set "$LINK_A" up
in_pep ip link set "$LINK_P" up

PKI="$WORK/pki"
"$AG" dev-ca init --dir "$PKI" >/dev/null
"$AG" dev-ca server --ca-dir "$PKI" --name pep --dns localhost --ip $PEP_IP >/dev/null
"$AG" dev-ca actor --ca-dir "$PKI" --actor bench/client >/dev/null

# --- processes ---------------------------------------------------------------------------------
ip netns exec "$PEP_NS" "$TB" sink $SINK 2>"$WORK/sink.log" & pids+=($!)
cat >"$WORK/policy.yaml" <<EOF
policies:
- name: bench
  selector: {atespace: bench}
  rules:
  - tcp: {cidrs: [$PEP_IP/32], ports: [$PORT_SINK]}
EOF
cat >"$WORK/pep.yaml" <<EOF
logging: {level: warn}
admin: {listen: 127.0.0.1:$PORT_PEP_ADMIN}
grpc: {listen: 127.0.0.1:$((PORT_PEP_ADMIN + 1)), extproc: false, resolve_route: false}
ingress: {enabled: false}
directory:
  static:
    actors:
    - {atespace: bench, name: client, endpoint: '127.0.0.1:1'}
egress:
  listen: $PEP_IP:$PORT_PEP
  tls: {cert_file: $PKI/pep.crt, key_file: $PKI/pep.key, client_ca_file: $PKI/ca.crt}
  policy: {source: files, files: [$WORK/policy.yaml]}
  limits: {idle_timeout: 300s}
  resolver: {system: false, static: {unused.bench: [192.0.2.1]}}
  guard: {exempt: [$PEP_IP/32]}
EOF
ip netns exec "$PEP_NS" "$AG" serve --config "$WORK/pep.yaml" 2>>"$WORK/pep.log" & pids+=($!); PID_PEP=$!

agent_config() { # capture_port admin_port mode
  cat <<EOF
logging: {level: warn}
admin: {listen: 127.0.0.1:$2}
grpc: {listen: 127.0.0.1:$(($2 + 100)), extproc: false, resolve_route: false}
ingress: {enabled: false}
agent:
  listen: ['127.0.0.1:$1']
  mode: $3
  mark: $MARK
  pep:
    address: $PEP_IP:$PORT_PEP
    server_name: localhost
    ca_file: $PKI/ca.crt
    cert_file: $PKI/bench.client.crt
    key_file: $PKI/bench.client.key
EOF
}
declare -A PID CAPTURE=([per-connection]=$PORT_PERCONN [pooled]=$PORT_POOLED)
declare -A ADMIN=([per-connection]=$ADMIN_PERCONN [pooled]=$ADMIN_POOLED)
start_agent() { # mode: a fresh process (memory is measured on agents that served nothing)
  local m=$1
  [ -z "${PID[$m]:-}" ] || { kill "${PID[$m]}" 2>/dev/null || true; wait "${PID[$m]}" 2>/dev/null || true; }
  agent_config "${CAPTURE[$m]}" "${ADMIN[$m]}" "$m" >"$WORK/agent-$m.yaml"
  ip netns exec "$ACTOR_NS" "$AG" serve --config "$WORK/agent-$m.yaml" 2>>"$WORK/agent-$m.log" & pids+=($!); PID[$m]=$!
  for _ in $(seq 1 100); do in_actor curl -sf "http://127.0.0.1:${ADMIN[$m]}/readyz" >/dev/null 2>&1 && return; sleep 0.1; done
  log "agent $m not ready:"; tail -5 "$WORK/agent-$m.log" >&2; exit 1
}
for _ in $(seq 1 100); do in_pep curl -sf "http://127.0.0.1:$PORT_PEP_ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
start_agent per-connection
start_agent pooled

capture() { # target: rules towards its agent, or none for direct
  case $1 in
    direct) "$AG" agent remove-rules --netns "$ACTOR_NS" >/dev/null ;;
    *) "$AG" agent install-rules --exclude-mark $MARK --port "${CAPTURE[$1]}" --netns "$ACTOR_NS" >/dev/null ;;
  esac
}

# --- load --------------------------------------------------------------------------------------
# shellcheck source=bench/measure.sh
. bench/measure.sh

# Idle captured connections first, on agents that have served nothing yet (not over the wire
# of RTT_MS: a latency run).
declare -A MEM=([per-connection]=- [pooled]=-)
for m in per-connection pooled; do
  [ -z "$RTT_MS" ] || break
  capture "$m"
  p=${PID[$m]}
  r0=$(rss_kib "$p")
  fifo="$WORK/hold.$$"; rm -f "$fifo"; mkfifo "$fifo"
  ip netns exec "$ACTOR_NS" "$TB" plain-hold $SINK "$HOLD" <"$fifo" >"$WORK/hold.out" 2>"$WORK/hold.err" &
  hp=$!
  exec 9>"$fifo"
  for _ in $(seq 1 1200); do grep -q held "$WORK/hold.out" && break; kill -0 $hp 2>/dev/null || break; sleep 0.1; done
  if grep -q held "$WORK/hold.out"; then
    sleep 1
    r1=$(rss_kib "$p")
    MEM[$m]=$(awk -v a="$r0" -v b="$r1" -v n="$HOLD" 'BEGIN {printf "%.1f", (b - a) / n}')
  else
    MEM[$m]=nan
    log "WARNING $m: could not hold $HOLD connections: $(tail -1 "$WORK/hold.err")"
  fi
  log "$m holding $HOLD: ${MEM[$m]} KiB per idle captured connection"
  exec 9>&-
  wait $hp 2>/dev/null || true
  rm -f "$fifo" "$WORK/hold.out"
  sleep 1
done

declare -A ROUND # target,metric,round -> that round's figure (the bars per round, below)
for round in $(seq 1 "$ROUNDS"); do
  order=("${TARGETS[@]:$((round % 3))}" "${TARGETS[@]:0:$((round % 3))}")
  for t in "${order[@]}"; do
    capture "$t"
    pa=${PID[$t]:-}
    if [ -z "$RTT_MS" ]; then
      a0=0; [ -z "$pa" ] || a0=$(cpu_ticks "$pa")
      e0=$(cpu_ticks "$PID_PEP")
      out=$(in_actor "$TB" plain-bulk $SINK "$DURATION")
      a1=0; [ -z "$pa" ] || a1=$(cpu_ticks "$pa")
      e1=$(cpu_ticks "$PID_PEP")
      bytes=$(field bytes <<<"$out") gbps=$(field gbps <<<"$out")
      per_gib() { awk -v c="$1" -v t="$TICK" -v b="$bytes" 'BEGIN {printf "%.3f", c / t / (b / 1073741824)}'; }
      agent_gib=$(per_gib $((a1 - a0))) pep_gib=$(per_gib $((e1 - e0)))
      log "round $round $t bulk: $gbps Gbit/s; CPU-s/GiB agent $agent_gib, PEP $pep_gib"
      add "$t,gbps" "$gbps"; add "$t,agent_gib" "$agent_gib"; add "$t,pep_gib" "$pep_gib"
      ROUND[$t,gbps,$round]=$gbps
    fi

    a0=0; [ -z "$pa" ] || a0=$(cpu_ticks "$pa")
    e0=$(cpu_ticks "$PID_PEP")
    out=$(in_actor "$TB" plain-setup $SINK "$DURATION" "$CONC")
    a1=0; [ -z "$pa" ] || a1=$(cpu_ticks "$pa")
    e1=$(cpu_ticks "$PID_PEP")
    n=$(field connections <<<"$out")
    per_conn() { awk -v c="$1" -v t="$TICK" -v n="$n" 'BEGIN {printf "%.0f", (n > 0) ? c / t / n * 1e6 : 0}'; }
    agent_us=$(per_conn $((a1 - a0))) pep_us=$(per_conn $((e1 - e0)))
    add "$t,agent_us" "$agent_us"; add "$t,pep_us" "$pep_us"
    rate=$(field per_sec <<<"$out") p50=$(field p50_ms <<<"$out") p99=$(field p99_ms <<<"$out")
    errs=$(field errors <<<"$out")
    [ "$errs" = 0 ] || log "WARNING $t: $errs failed connections"
    log "round $round $t connections: $rate/s, connect + first byte p50 ${p50}ms p99 ${p99}ms; CPU-us/connection agent $agent_us, PEP $pep_us"
    add "$t,rate" "$rate"; add "$t,p50" "$p50"; add "$t,p99" "$p99"
    ROUND[$t,p50,$round]=$p50
  done
done
capture direct

# --- report ------------------------------------------------------------------------------------
# The bar's ratio in each round (targets of one round ran back to back): the spread shows how
# much of a miss or a pass is this machine's run-to-run noise.
per_round() { # p50 | gbps
  local r
  for r in $(seq 1 "$ROUNDS"); do
    case $1 in
      # nan when the ratio has no meaning (per-connection added nothing, or moved nothing).
      p50) awk -v a="${ROUND[pooled,p50,$r]}" -v b="${ROUND[per-connection,p50,$r]}" -v d="${ROUND[direct,p50,$r]}" \
        'BEGIN {if (b - d > 0) printf "%.3f\n", (a - d) / (b - d); else print "nan"}' ;;
      gbps) awk -v a="${ROUND[pooled,gbps,$r]}" -v b="${ROUND[per-connection,gbps,$r]}" \
        'BEGIN {if (b > 0) printf "%.3f\n", a / b; else print "nan"}' ;;
    esac
  done | awk '$1 == "nan" {bad++; next} {print}
    END {if (bad) printf "per round: %d of the rounds without a ratio\n", bad > "/dev/stderr"}' |
    sort -g | awk '{v[NR] = $1} END {if (NR == 0) {printf "per round: no ratio"; exit}
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      printf "per round: median %.2f, range %.2f to %.2f", m, v[1], v[NR]}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }
added() { awk -v a="$(mean "$1,$2")" -v b="$(mean "direct,$2")" 'BEGIN {printf "%.3f", a - b}'; }
echo
if [ -n "$RTT_MS" ]; then
  echo "agent benchmark over a ${RTT_MS} ms round trip (tunnel_bench wire): $CORES cores, $ROUNDS rounds x ${DURATION}s, connection concurrency $CONC"
  printf '%-15s %9s %8s %8s %8s %8s %10s %9s\n' target "conns/s" "p50 ms" "p99 ms" "+p50 ms" "+p99 ms" "agent us/c" "PEP us/c"
  for t in "${TARGETS[@]}"; do
    printf '%-15s %9.0f %8.3f %8.3f %8s %8s %10.0f %9.0f\n' "$t" "$(mean "$t,rate")" "$(mean "$t,p50")" \
      "$(mean "$t,p99")" "$(added "$t" p50)" "$(added "$t" p99)" "$(mean "$t,agent_us")" "$(mean "$t,pep_us")"
  done
  echo "(us/c: CPU-microseconds per new connection, connect to close)"
  echo "bar (means over rounds; per round: the same ratio within each round):"
  echo "  added p50   pooled / per-connection   $(ratio "$(added pooled p50)" "$(added per-connection p50)")   [<= 0.33]   $(per_round p50)"
  exit 0
fi
echo "agent benchmark: $CORES cores, $ROUNDS rounds x ${DURATION}s, connection concurrency $CONC, $HOLD idle connections held"
printf '%-15s %8s %8s %14s %12s %9s %8s %8s %8s %8s %10s %9s\n' target "Gbit/s" "/direct" "agent CPU/GiB" "PEP CPU/GiB" \
  "conns/s" "p50 ms" "p99 ms" "+p50 ms" "+p99 ms" "agent us/c" "PEP us/c"
for t in "${TARGETS[@]}"; do
  printf '%-15s %8.3f %8s %14s %12s %9.0f %8.3f %8.3f %8s %8s %10.0f %9.0f\n' "$t" "$(mean "$t,gbps")" \
    "$(ratio "$(mean "$t,gbps")" "$(mean direct,gbps)")" "$(mean "$t,agent_gib")" "$(mean "$t,pep_gib")" \
    "$(mean "$t,rate")" "$(mean "$t,p50")" "$(mean "$t,p99")" "$(added "$t" p50)" "$(added "$t" p99)" \
    "$(mean "$t,agent_us")" "$(mean "$t,pep_us")"
done
echo "(CPU/GiB: CPU-seconds per GiB moved; us/c: CPU-microseconds per new connection, connect to close)"
echo
echo "agent memory per idle captured connection (KiB, RSS delta / $HOLD held): per-connection ${MEM[per-connection]}, pooled ${MEM[pooled]}   [<= 16]"
echo "bars (means over rounds; per round: the same ratio within each round):"
echo "  added p50   pooled / per-connection   $(ratio "$(added pooled p50)" "$(added per-connection p50)")   [<= 0.33]   $(per_round p50)"
echo "  Gbit/s      pooled / per-connection   $(ratio "$(mean pooled,gbps)" "$(mean per-connection,gbps)")   [>= 1.0]    $(per_round gbps)"
