#!/usr/bin/env bash
# Whole-server throughput of the 2-worker examples, metrics on vs off, under wrk on
# loopback: requests per second, p99 latency of GET /users/42, and the workers' CPU time
# per request (user + system, from /proc). The server's two workers share CPU 1 and wrk
# runs on CPU 0 (taskset, where there are two CPUs). Each round runs both modes back to
# back, in alternating order (the machine is shared and noisy); the medians and their
# ratios are printed.
#
# With `process` as third argument, "off" is the server with its request metrics but
# without process metrics (`--no-process-metrics`): what the workers' sampling threads cost.
#
# With `peers`, each round runs four modes, in rotating order: off (no request metrics),
# on (shmetrics), peer (`--peer`: axum-prometheus or actix-web-prom in process, each worker
# reporting its own requests), and, once per round, the source documents' own system: Sanic
# with prometheus_client in multiprocess mode (scripts/seed_sanic_app.py, 2 workers, on the
# same CPU and port setup; Sanic installed with pip if missing).
#
#   scripts/bench-server.sh [rounds (3)] [seconds per run (10)] [metrics|process|peers]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
compare=${3:-metrics}
case "$compare" in
  metrics) off_flag=--no-metrics ;;
  process) off_flag=--no-process-metrics ;;
  peers) off_flag=--no-metrics
    python3 -c 'import sanic, prometheus_client' 2>/dev/null || python3 -m pip install -q sanic prometheus-client \
      || python3 -m pip install -q --user --break-system-packages sanic prometheus-client ;;
  *) echo "compare metrics, process or peers, not $compare" >&2; exit 2 ;;
esac
command -v wrk >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build -q --release -p shmetrics-examples --example axum_workers --example actix_workers

# The server (both workers) on one CPU, wrk on the other: the scheduler does not move the
# client and the workers around each other, which is most of the round-to-round noise here.
server_cpu="" client_cpu=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
  server_cpu="taskset -c 1" client_cpu="taskset -c 0"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cpu_ticks() { # pids... -> "utime stime" of all, in clock ticks
  local user=0 sys=0 pid f
  for pid in "$@"; do
    read -r -a f <"/proc/$pid/stat"
    user=$((user + f[13])) sys=$((sys + f[14]))
  done
  echo "$user $sys"
}

# The workers' CPU time per request, split: user (the server's own code, where a middleware
# adds its work) and system (the kernel's TCP over loopback, the same work in every mode,
# and most of the round-to-round spread).
run() { # example mode -> "rps p99_ms cpu_us_per_request user_us sys_us"
  local example=$1 mode=$2 flag="" pid workers before after
  [ "$mode" = off ] && flag=$off_flag
  [ "$mode" = peer ] && flag=--peer
  rm -rf "$work/store-$example"; mkdir -p "$work/store-$example"
  if [ "$example" = sanic ]; then
    # shellcheck disable=SC2086
    (cd scripts && PROMETHEUS_MULTIPROC_DIR="$work/store-$example" exec $server_cpu \
      python3 -m sanic seed_sanic_app:app --workers 2 --host 127.0.0.1 --port "$port" >/dev/null 2>&1) &
  else
    PROMETHEUS_MULTIPROC_DIR="$work/store-$example" RUST_LOG=error \
      $server_cpu "${CARGO_TARGET_DIR:-target}/release/examples/$example" --workers 2 --port "$port" $flag &
  fi
  pid=$!
  for _ in $(seq 400); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.05; done
  $client_cpu wrk -t1 -c32 -d2s "http://127.0.0.1:$port/users/42" >/dev/null # warm-up
  # The server's processes: its workers (Sanic: the workers of its main process).
  workers=$(pgrep -P "$pid" | tr '\n' ' ')
  if [ "$example" = sanic ]; then
    # shellcheck disable=SC2086
    workers="$workers $(for p in $workers; do pgrep -P "$p"; done | tr '\n' ' ')"
  fi
  # shellcheck disable=SC2086
  before=$(cpu_ticks $workers)
  $client_cpu wrk -t1 -c32 -d"${secs}s" --latency "http://127.0.0.1:$port/users/42" >"$work/wrk.txt"
  # shellcheck disable=SC2086
  after=$(cpu_ticks $workers)
  kill -TERM "$pid"; wait "$pid" || true
  local rps p99 requests cpu
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.txt")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' "$work/wrk.txt")
  requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
  # shellcheck disable=SC2086
  set -- $before $after
  python3 -c "t = 1e6 / $(getconf CLK_TCK) / $requests; u = ($3 - $1) * t; s = ($4 - $2) * t; print(f'$rps $p99 {u + s:.2f} {u:.2f} {s:.2f}')"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

col() { cut -d' ' -f"$1" "$work/$2" | median; }
pct() { python3 -c "print(f'{$1 / $2 * 100:.1f}')"; }

for example in axum_workers actix_workers; do
  modes="on off"
  [ "$compare" = peers ] && modes="on off peer"
  for m in $modes; do : >"$work/$m"; done
  for r in $(seq "$rounds"); do
    # ABBA (with peers: a rotation): the order changes from round to round, so a drift
    # within a round (another tenant, the page cache, the clock) does not always favour
    # the same mode.
    if [ "$compare" = peers ]; then
      case $((r % 3)) in 1) order="on off peer" ;; 2) order="off peer on" ;; *) order="peer on off" ;; esac
    else
      order="on off"; [ $((r % 2)) -eq 0 ] && order="off on"
    fi
    for mode in $order; do
      out=$(run "$example" "$mode")
      echo "$example round $r $compare $mode: $out (requests/s, p99 ms, worker CPU us/request: all, user, system)"
      echo "$out" >>"$work/$mode"
    done
  done
  on_rps=$(col 1 on); off_rps=$(col 1 off); on_p99=$(col 2 on); off_p99=$(col 2 off)
  on_cpu=$(col 3 on); off_cpu=$(col 3 off)
  on_user=$(col 4 on); off_user=$(col 4 off); on_sys=$(col 5 on); off_sys=$(col 5 off)
  ratio=$(pct "$on_rps" "$off_rps")
  # The median of the rounds' own on/off ratios (each pair ran back to back).
  paired=$(paste -d' ' "$work/on" "$work/off" | awk '{print $1 / $(NF / 2 + 1) * 100}' | median)
  cpu_ratio=$(pct "$off_cpu" "$on_cpu")
  echo "$example ($compare on/off): median requests/s on $on_rps, off $off_rps (on/off $ratio %, per round $(printf '%.1f' "$paired") %); median p99 on ${on_p99} ms, off ${off_p99} ms; worker CPU per request on ${on_cpu} us, off ${off_cpu} us (off/on $cpu_ratio %): user on ${on_user} us, off ${off_user} us; system on ${on_sys} us, off ${off_sys} us"
  if [ "$compare" = peers ]; then
    peer_rps=$(col 1 peer); peer_p99=$(col 2 peer); peer_cpu=$(col 3 peer)
    echo "$example (peer): median requests/s $peer_rps (peer/off $(pct "$peer_rps" "$off_rps") %, shmetrics/peer $(pct "$on_rps" "$peer_rps") %); median p99 ${peer_p99} ms; worker CPU per request ${peer_cpu} us"
    echo "$on_rps" >"$work/on-$example"
  fi
done

if [ "$compare" = peers ]; then
  : >"$work/sanic"
  for r in $(seq "$rounds"); do
    out=$(run sanic seed)
    echo "sanic round $r: $out (requests/s, p99 ms, worker CPU us/request: all, user, system)"
    echo "$out" >>"$work/sanic"
  done
  sanic_rps=$(col 1 sanic)
  echo "sanic + prometheus_client (the source documents' system): median requests/s $sanic_rps; median p99 $(col 2 sanic) ms; worker CPU per request $(col 3 sanic) us; axum with shmetrics $(pct "$(cat "$work/on-axum_workers")" "$sanic_rps") %, actix-web with shmetrics $(pct "$(cat "$work/on-actix_workers")" "$sanic_rps") % of it"
fi
