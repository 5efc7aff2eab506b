#!/usr/bin/env bash
# Ingress benchmark: actorgate's own proxy vs Envoy 1.40 vs nginx, same worker, same load, one run.
#
#   bench/ingress.sh                 # defaults below; env vars override
#   ROUNDS=3 DURATION=15 CONNS=64 bench/ingress.sh
#
# Fairness, as run here:
# * one echo worker (actorgate echo-worker, release build) answers GET /hello for every target;
#   "direct" measures it without a proxy;
# * every proxy gets the same number of worker threads: the machine's core count
#   (actorgate: tokio workers = nproc; Envoy: --concurrency nproc; nginx: worker_processes nproc);
# * access logs off everywhere; every proxy keeps upstream HTTP/1.1 connections alive
#   (actorgate's pool, Envoy's cluster pool, nginx `keepalive 256`);
# * actorgate resolves the actor from `ate-target-actor` (static directory, route cache on); the
#   others use a static route; the header is sent to all targets so requests are byte-identical;
# * the load generator runs with the same flags for every target and is not pinned: on a 2-core
#   machine the load generator, the proxy and the worker share both cores for every target alike
#   (pinning them apart would leave one core per party); targets alternate round by round so
#   drift hits all of them alike;
# * a target that drops or resets connections is reported (wrk socket errors, h2load failures),
#   so its req/s cannot look good by failing fast;
# * HTTP/1.1 keep-alive: wrk (-t THREADS -c CONNS); HTTP/2 (h2c prior knowledge): h2load
#   (-t THREADS -c H2_CONNS -m H2_STREAMS). p50/p99 from wrk --latency and from h2load's per-request log.
#
# Prints requests/s, p50 and p99 per target and protocol, and the ratios actorgate/Envoy and
# actorgate/nginx (requests/s: higher is better; p99: lower is better). The adapter section
# compares Envoy + actorgate ExtProc (deploy/envoy/extproc-original-dst.yaml, route cache on) with
# Envoy's static route: the ratio and the per-request cost of the ExtProc round trip, and Envoy with
# a do-nothing ExtProc server (the ceiling for any server on this machine). A last table
# gives the CPU each party spends per request (HTTP/1.1), which shows where the time goes.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
H2_CONNS=${H2_CONNS:-16}
H2_STREAMS=${H2_STREAMS:-16}
CORES=$(nproc)
WORK=${WORK:-$(mktemp -d /tmp/actorgate-bench.XXXXXX)}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
PORT_WORKER=18180 PORT_ACTORGATE=18181 PORT_ENVOY=18182 PORT_NGINX=18183 PORT_NGINX_H2=18184 PORT_EXTPROC=18185
PORT_ADMIN=18190 PORT_GRPC=18191 PORT_CP=18192 PORT_GRPC2=18193 PORT_EXTPROC2=18186
PORT_FLOOR=18194 PORT_EXTPROC3=18187

log() { echo "bench: $*" >&2; }

# --- tools -------------------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v nginx >/dev/null || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# shellcheck source=bench/envoy.sh
. bench/envoy.sh

log "building actorgate (release)"
cargo build --release --quiet
cargo build --release --quiet -p ingress --example extproc_floor
AG="$TARGET_DIR/release/actorgate"
FLOOR="$TARGET_DIR/release/examples/extproc_floor"

# --- processes ---------------------------------------------------------------------------------
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$AG" echo-worker --listen 127.0.0.1:$PORT_WORKER --name bench 2>"$WORK/worker.log" & pids+=($!); PID_WORKER=$!

cat >"$WORK/actorgate.yaml" <<EOF
logging: {level: warn}
admin: {listen: 127.0.0.1:$PORT_ADMIN}
grpc: {listen: 127.0.0.1:$PORT_GRPC}
ingress:
  http: {listen: 127.0.0.1:$PORT_ACTORGATE}
resolver:
  route_cache: {ttl: 60s}
directory:
  static:
    actors:
    - {atespace: demo, name: hello, endpoint: '127.0.0.1:$PORT_WORKER'}
EOF
"$AG" serve --config "$WORK/actorgate.yaml" 2>"$WORK/actorgate.log" & pids+=($!); PID_ACTORGATE=$!

cat >"$WORK/envoy.yaml" <<EOF
static_resources:
  listeners:
  - name: bench
    address: {socket_address: {address: 127.0.0.1, port_value: $PORT_ENVOY}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: worker}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: worker
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: worker
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $PORT_WORKER}}}
EOF
"$ENVOY" -c "$WORK/envoy.yaml" --concurrency "$CORES" --log-level error --disable-hot-restart \
  --base-id $((RANDOM % 10000 + 100)) 2>"$WORK/envoy.log" & pids+=($!); PID_ENVOY=$!

# Envoy + actorgate ExtProc: the deploy/ example (ORIGINAL_DST by header), same concurrency.
sed -e "s/port_value: 10000/port_value: $PORT_EXTPROC/" -e "s/port_value: 50051/port_value: $PORT_GRPC/" \
    -e "s/port_value: 9901/port_value: $((PORT_ADMIN + 5))/" deploy/envoy/extproc-original-dst.yaml >"$WORK/envoy-extproc.yaml"
"$ENVOY" -c "$WORK/envoy-extproc.yaml" --concurrency "$CORES" --log-level error --disable-hot-restart \
  --base-id $((RANDOM % 10000 + 20000)) 2>"$WORK/envoy-extproc.log" & pids+=($!); PID_ENVOY_EXTPROC=$!

# Envoy + actorgate ExtProc against a remote control plane answering in ~1 ms: a second actorgate
# serves the static directory as ateapi.Control with 1 ms latency per call; the ExtProc
# actorgate uses it (route cache at its default 5 s), so only cache misses pay the latency.
# ateapi carries the worker's pod IP only, and the actor port of `ate-target-actor` is 80, so
# this target's worker (the same echo worker) listens on 127.0.0.2:80, like a worker pod.
"$AG" echo-worker --listen 127.0.0.2:80 --name bench 2>"$WORK/worker80.log" & pids+=($!); PID_WORKER80=$!
cat >"$WORK/cp.yaml" <<EOF
logging: {level: warn}
admin: {listen: 127.0.0.1:$((PORT_ADMIN + 7))}
grpc: {listen: 127.0.0.1:$PORT_CP, control_plane_simulator: true, extproc: false, resolve_route: false}
ingress: {enabled: false}
directory:
  static:
    latency: 1ms
    actors:
    - {atespace: demo, name: hello, endpoint: '127.0.0.2:80'}
EOF
"$AG" serve --config "$WORK/cp.yaml" 2>"$WORK/cp.log" & pids+=($!); PID_CP=$!
# The ExtProc actorgate starts once the control plane answers (readiness is probed every 5 s).
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$((PORT_ADMIN + 7))/readyz" && break; sleep 0.1; done
cat >"$WORK/extproc-remote.yaml" <<EOF
logging: {level: warn}
admin: {listen: 127.0.0.1:$((PORT_ADMIN + 8))}
grpc: {listen: 127.0.0.1:$PORT_GRPC2}
ingress: {enabled: false}
directory: {ateapi: {address: '127.0.0.1:$PORT_CP', tls: plaintext}}
EOF
"$AG" serve --config "$WORK/extproc-remote.yaml" 2>"$WORK/extproc-remote.log" & pids+=($!); PID_EXTPROC_REMOTE=$!
sed -e "s/port_value: 10000/port_value: $PORT_EXTPROC2/" -e "s/port_value: 50051/port_value: $PORT_GRPC2/" \
    -e "s/port_value: 9901/port_value: $((PORT_ADMIN + 6))/" deploy/envoy/extproc-original-dst.yaml >"$WORK/envoy-extproc-remote.yaml"
"$ENVOY" -c "$WORK/envoy-extproc-remote.yaml" --concurrency "$CORES" --log-level error --disable-hot-restart \
  --base-id $((RANDOM % 10000 + 40000)) 2>"$WORK/envoy-extproc-remote.log" & pids+=($!); PID_ENVOY_EXTPROC_REMOTE=$!

# Envoy + the cheapest ExtProc server that still routes (ingress/examples/extproc_floor.rs: the
# same answer as actorgate's for this route, precomputed, no resolution): Envoy's own ext_proc
# cost, without actorgate's.
"$FLOOR" 127.0.0.1:$PORT_FLOOR demo/hello 127.0.0.1:$PORT_WORKER 2>"$WORK/floor.log" & pids+=($!); PID_FLOOR=$!
sed -e "s/port_value: 10000/port_value: $PORT_EXTPROC3/" -e "s/port_value: 50051/port_value: $PORT_FLOOR/" \
    -e "s/port_value: 9901/port_value: $((PORT_ADMIN + 9))/" deploy/envoy/extproc-original-dst.yaml >"$WORK/envoy-floor.yaml"
"$ENVOY" -c "$WORK/envoy-floor.yaml" --concurrency "$CORES" --log-level error --disable-hot-restart \
  --base-id $((RANDOM % 10000 + 60000)) 2>"$WORK/envoy-floor.log" & pids+=($!); PID_ENVOY_FLOOR=$!

cat >"$WORK/nginx.conf" <<EOF
worker_processes $CORES;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-tmp;
  proxy_temp_path $WORK/nginx-tmp;
  # No request cap per client connection (h2load does not reconnect after GOAWAY) or upstream one.
  keepalive_requests 1000000000;
  keepalive_timeout 300s;
  upstream worker { server 127.0.0.1:$PORT_WORKER; keepalive 256; keepalive_requests 1000000000; }
  # Two listeners: nginx before 1.25 cannot serve HTTP/1.1 and h2c on one plaintext port.
  server {
    listen 127.0.0.1:$PORT_NGINX;
    listen 127.0.0.1:$PORT_NGINX_H2 http2;
    location / {
      proxy_pass http://worker;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
    }
  }
}
EOF
mkdir -p "$WORK/nginx-tmp"
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" 2>>"$WORK/nginx-error.log" & pids+=($!); PID_NGINX=$!

declare -A PORT=([direct]=$PORT_WORKER [actorgate]=$PORT_ACTORGATE [envoy]=$PORT_ENVOY [nginx]=$PORT_NGINX [envoy+extproc]=$PORT_EXTPROC [extproc+1ms-cp]=$PORT_EXTPROC2 [envoy+floor]=$PORT_EXTPROC3)
declare -A PORT_H2=([direct]=$PORT_WORKER [actorgate]=$PORT_ACTORGATE [envoy]=$PORT_ENVOY [nginx]=$PORT_NGINX_H2 [envoy+extproc]=$PORT_EXTPROC [extproc+1ms-cp]=$PORT_EXTPROC2 [envoy+floor]=$PORT_EXTPROC3)
TARGETS=(direct actorgate envoy nginx envoy+extproc extproc+1ms-cp envoy+floor)
# CPU accounting per target (HTTP/1.1 runs): the gateway's processes, and the worker's. In the
# ExtProc targets the gateway is Envoy plus the ExtProc actorgate (and the 1 ms control plane),
# shown apart so Envoy's own cost of ext_proc is visible.
declare -A GW_PIDS=([direct]="" [actorgate]="$PID_ACTORGATE" [envoy]="$PID_ENVOY" [nginx]="$PID_NGINX"
  [envoy+extproc]="$PID_ENVOY_EXTPROC" [extproc+1ms-cp]="$PID_ENVOY_EXTPROC_REMOTE" [envoy+floor]="$PID_ENVOY_FLOOR")
declare -A SIDE_PIDS=([envoy+extproc]="$PID_ACTORGATE" [extproc+1ms-cp]="$PID_EXTPROC_REMOTE $PID_CP" [envoy+floor]="$PID_FLOOR")
declare -A WORKER_PIDS=([extproc+1ms-cp]="$PID_WORKER80")
for t in "${TARGETS[@]}"; do
  for _ in $(seq 1 300); do
    if curl -sf -o /dev/null -H 'ate-target-actor: demo/hello' "http://127.0.0.1:${PORT[$t]}/hello"; then continue 2; fi
    sleep 0.1
  done
  log "$t did not come up; logs in $WORK"; exit 1
done
# h2c must work on every target too.
for t in "${TARGETS[@]}"; do
  curl -sf --http2-prior-knowledge -o /dev/null -H 'ate-target-actor: demo/hello' "http://127.0.0.1:${PORT_H2[$t]}/hello" \
    || { log "$t does not speak h2c"; exit 1; }
done

# --- load --------------------------------------------------------------------------------------
AFFINITY=""
to_ms() { # wrk latency "1.23ms" / "456.00us" / "1.20s" -> ms
  awk -v v="$1" 'BEGIN { if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 } else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 } else print v }'
}
TICK=$(getconf CLK_TCK)
cpu_ticks() { # pids (and their child processes, e.g. nginx workers) -> utime + stime ticks
  local total=0 p c v
  for p in "$@"; do
    kill -0 "$p" 2>/dev/null || { log "process $p is gone; logs in $WORK"; exit 1; }
    for c in "$p" $(pgrep -P "$p" || true); do
      v=$(awk '{print $14 + $15}' "/proc/$c/stat" 2>/dev/null || true)
      total=$((total + ${v:-0}))
    done
  done
  echo "$total"
}
run_wrk() { # target -> "rps p50 p99 gateway_us side_us worker_us" (CPU µs per request)
  local out g0 s0 w0 g1 s1 w1 n
  local gw=${GW_PIDS[$1]:-} side=${SIDE_PIDS[$1]:-} worker=${WORKER_PIDS[$1]:-$PID_WORKER}
  g0=$(cpu_ticks $gw) && s0=$(cpu_ticks $side) && w0=$(cpu_ticks $worker) || exit 1
  out=$($AFFINITY wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency -H 'ate-target-actor: demo/hello' \
    "http://127.0.0.1:${PORT[$1]}/hello")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" || $1 == "50.000%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" || $1 == "99.000%" {print $2}' <<<"$out")")
  if grep -q "Non-2xx" <<<"$out"; then log "WARNING $1: non-2xx answers under HTTP/1.1 load"; fi
  if grep -q "Socket errors" <<<"$out"; then log "WARNING $1: $(grep 'Socket errors' <<<"$out" | xargs)"; fi
  g1=$(cpu_ticks $gw) && s1=$(cpu_ticks $side) && w1=$(cpu_ticks $worker) || exit 1
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  echo "$rps $p50 $p99 $(awk -v g=$((g1 - g0)) -v s=$((s1 - s0)) -v w=$((w1 - w0)) -v n="$n" -v t="$TICK" \
    'BEGIN { f = 1e6 / t / n; printf "%.1f %.1f %.1f", g * f, s * f, w * f }')"
}
run_h2() { # target -> "rps p50 p99"
  local logf="$WORK/h2load-$1.log" out
  rm -f "$logf"
  out=$($AFFINITY h2load -t"$THREADS" -c"$H2_CONNS" -m"$H2_STREAMS" -D "$DURATION" --warm-up-time=1 \
    -H 'ate-target-actor: demo/hello' --log-file="$logf" "http://127.0.0.1:${PORT_H2[$1]}/hello" 2>&1)
  local rps
  rps=$(awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) print $(i - 1)}' <<<"$out" | tr -d ',')
  if ! grep -q "status codes: .* 0 3xx, 0 4xx, 0 5xx" <<<"$out"; then log "WARNING $1: non-2xx answers under HTTP/2 load"; fi
  if ! grep -qE "requests: .* 0 failed, 0 errored" <<<"$out"; then log "WARNING $1: $(grep '^requests:' <<<"$out")"; fi
  # Log columns: start (µs since epoch), status, latency (µs).
  read -r p50 p99 < <(awk '{print $3}' "$logf" | sort -n | awk '{a[NR] = $1} END {
      if (NR == 0) { print "nan nan"; exit }
      i50 = int(NR * 0.50); if (i50 < 1) i50 = 1; i99 = int(NR * 0.99); if (i99 < 1) i99 = 1;
      printf "%.3f %.3f\n", a[i50] / 1000, a[i99] / 1000 }')
  echo "$rps $p50 $p99"
}

declare -A SUM
for proto in h1 h2; do for t in "${TARGETS[@]}"; do for k in n rps p50 p99 gw side worker; do SUM[$proto,$t,$k]=0; done; done; done
for round in $(seq 1 "$ROUNDS"); do
  # Rotate the order each round.
  order=("${TARGETS[@]:$((round % ${#TARGETS[@]}))}" "${TARGETS[@]:0:$((round % ${#TARGETS[@]}))}")
  for t in "${order[@]}"; do
    for proto in h1 h2; do
      if [ "$proto" = h1 ]; then r=$(run_wrk "$t"); else r=$(run_h2 "$t"); fi
      read -r rps p50 p99 gw side worker <<<"$r"   # HTTP/2 runs leave the CPU fields empty (0)
      log "round $round $proto $t: $rps req/s p50 ${p50}ms p99 ${p99}ms"
      SUM[$proto,$t,n]=$((SUM[$proto,$t,n] + 1))
      for k in rps p50 p99 gw side worker; do
        SUM[$proto,$t,$k]=$(awk -v a="${SUM[$proto,$t,$k]}" -v b="${!k}" 'BEGIN {print a + b}')
      done
    done
  done
done

echo
echo "ingress benchmark: $CORES cores, $ROUNDS rounds x ${DURATION}s, GET /hello (6-byte body), Envoy $ENVOY_VERSION, $(nginx -v 2>&1 | sed 's/.*version: //')"
echo "HTTP/1.1: wrk -t$THREADS -c$CONNS; HTTP/2: h2load -t$THREADS -c$H2_CONNS -m$H2_STREAMS (h2c); means over rounds"
printf '%-6s %-16s %12s %10s %10s\n' proto target "req/s" "p50 ms" "p99 ms"
declare -A MEAN
for proto in h1 h2; do
  for t in "${TARGETS[@]}"; do
    n=${SUM[$proto,$t,n]}
    for k in rps p50 p99 gw side worker; do MEAN[$proto,$t,$k]=$(awk -v s="${SUM[$proto,$t,$k]}" -v n="$n" 'BEGIN {printf "%.3f", s / n}'); done
    printf '%-6s %-16s %12.0f %10.3f %10.3f\n' "$proto" "$t" "${MEAN[$proto,$t,rps]}" "${MEAN[$proto,$t,p50]}" "${MEAN[$proto,$t,p99]}"
  done
done
echo
printf '%-6s %-22s %10s %10s\n' proto ratio "req/s" "p99"
for proto in h1 h2; do
  for peer in envoy nginx; do
    printf '%-6s %-22s %10.3f %10.3f\n' "$proto" "actorgate/$peer" \
      "$(awk -v a="${MEAN[$proto,actorgate,rps]}" -v b="${MEAN[$proto,$peer,rps]}" 'BEGIN {print a / b}')" \
      "$(awk -v a="${MEAN[$proto,actorgate,p99]}" -v b="${MEAN[$proto,$peer,p99]}" 'BEGIN {print a / b}')"
  done
done
echo "(bar: actorgate/envoy req/s >= 1.0 and p99 <= 1.0 for both protocols)"
echo
printf '%-6s %-28s %10s %10s %22s\n' proto "adapter ratio" "req/s" "p99" "ext_proc cost/request"
for proto in h1 h2; do
  # Per-request overhead of the ExtProc round trip: the median latency difference at equal load.
  printf '%-6s %-28s %10.3f %10.3f %19.3f ms\n' "$proto" "envoy+extproc/envoy" \
    "$(awk -v a="${MEAN[$proto,envoy+extproc,rps]}" -v b="${MEAN[$proto,envoy,rps]}" 'BEGIN {print a / b}')" \
    "$(awk -v a="${MEAN[$proto,envoy+extproc,p99]}" -v b="${MEAN[$proto,envoy,p99]}" 'BEGIN {print a / b}')" \
    "$(awk -v a="${MEAN[$proto,envoy+extproc,p50]}" -v b="${MEAN[$proto,envoy,p50]}" 'BEGIN {print a - b}')"
done
for proto in h1 h2; do
  for pair in envoy+floor/envoy envoy+extproc/envoy+floor; do
    a=${pair%%/*} b=${pair#*/}
    printf '%-6s %-28s %10.3f %10.3f\n' "$proto" "$pair" \
      "$(awk -v a="${MEAN[$proto,$a,rps]}" -v b="${MEAN[$proto,$b,rps]}" 'BEGIN {print a / b}')" \
      "$(awk -v a="${MEAN[$proto,$a,p99]}" -v b="${MEAN[$proto,$b,p99]}" 'BEGIN {print a / b}')"
  done
done
for proto in h1 h2; do
  printf '%-6s %-28s %10.3f %10.3f\n' "$proto" "extproc+1ms-cp/envoy+extproc" \
    "$(awk -v a="${MEAN[$proto,extproc+1ms-cp,rps]}" -v b="${MEAN[$proto,envoy+extproc,rps]}" 'BEGIN {print a / b}')" \
    "$(awk -v a="${MEAN[$proto,extproc+1ms-cp,p99]}" -v b="${MEAN[$proto,envoy+extproc,p99]}" 'BEGIN {print a / b}')"
done
echo "(bar: envoy+extproc/envoy req/s >= 0.8; ext_proc cost = p50 difference;"
echo " envoy+floor/envoy: the most any ExtProc server can reach here (extproc_floor answers without"
echo " resolving); envoy+extproc/envoy+floor: what actorgate's server costs on top of that;"
echo " extproc+1ms-cp ~ envoy+extproc shows the route cache keeps the control plane off the hot path)"
echo
echo "CPU per request, HTTP/1.1 (µs, utime+stime over the wrk run / requests served):"
printf '%-6s %-16s %10s %14s %10s\n' proto target gateway "ExtProc side" worker
for t in "${TARGETS[@]}"; do
  printf '%-6s %-16s %10.1f %14.1f %10.1f\n' h1 "$t" "${MEAN[h1,$t,gw]}" "${MEAN[h1,$t,side]}" "${MEAN[h1,$t,worker]}"
done
echo "(gateway: actorgate, Envoy or nginx; for the ExtProc targets Envoy alone, with the ExtProc"
echo " server (actorgate and the 1 ms control plane, or extproc_floor) under ExtProc side)"
# Envoy is the bottleneck of both targets: at equal Envoy CPU, the ExtProc target's req/s relative
# to the static route is the inverse of this ratio, whatever the ExtProc server itself costs.
printf 'Envoy CPU per request with ext_proc / without: %.2f\n' \
  "$(awk -v a="${MEAN[h1,envoy+extproc,gw]}" -v b="${MEAN[h1,envoy,gw]}" 'BEGIN {print (b > 0) ? a / b : 0}')"
