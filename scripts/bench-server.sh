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
#   scripts/bench-server.sh [rounds (3)] [seconds per run (10)] [metrics|process]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-10}
compare=${3:-metrics}
case "$compare" in
  metrics) off_flag=--no-metrics ;;
  process) off_flag=--no-process-metrics ;;
  *) echo "compare metrics or process, not $compare" >&2; exit 2 ;;
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

cpu_ticks() { # pids... -> utime + stime of all, in clock ticks
  local total=0 pid f
  for pid in "$@"; do
    read -r -a f <"/proc/$pid/stat"
    total=$((total + f[13] + f[14]))
  done
  echo "$total"
}

run() { # example mode -> "rps p99_ms cpu_us_per_request"
  local example=$1 mode=$2 flag="" pid workers before after
  [ "$mode" = off ] && flag=$off_flag
  PROMETHEUS_MULTIPROC_DIR="$work/store-$example" RUST_LOG=error \
    $server_cpu "${CARGO_TARGET_DIR:-target}/release/examples/$example" --workers 2 --port "$port" $flag &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.05; done
  $client_cpu wrk -t1 -c32 -d2s "http://127.0.0.1:$port/users/42" >/dev/null # warm-up
  workers=$(pgrep -P "$pid" | tr '\n' ' ')
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
  cpu=$(python3 -c "print(f'{($after - $before) * 1e6 / $(getconf CLK_TCK) / $requests:.2f}')")
  echo "$rps $p99 $cpu"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

for example in axum_workers actix_workers; do
  : >"$work/on"; : >"$work/off"
  for r in $(seq "$rounds"); do
    # ABBA: the order alternates, so a drift within a round (another tenant, the page
    # cache, the clock) does not always favour the same mode.
    order="on off"; [ $((r % 2)) -eq 0 ] && order="off on"
    for mode in $order; do
      out=$(run "$example" "$mode")
      echo "$example round $r $compare $mode: $out (requests/s, p99 ms, worker CPU us/request)"
      echo "$out" >>"$work/$mode"
    done
  done
  col() { cut -d' ' -f"$1" "$work/$2" | median; }
  on_rps=$(col 1 on); off_rps=$(col 1 off); on_p99=$(col 2 on); off_p99=$(col 2 off)
  on_cpu=$(col 3 on); off_cpu=$(col 3 off)
  ratio=$(python3 -c "print(f'{$on_rps / $off_rps * 100:.1f}')")
  # The median of the rounds' own on/off ratios (each pair ran back to back).
  paired=$(paste -d' ' "$work/on" "$work/off" | awk '{print $1 / $4 * 100}' | median)
  cpu_ratio=$(python3 -c "print(f'{$off_cpu / $on_cpu * 100:.1f}')")
  echo "$example ($compare on/off): median requests/s on $on_rps, off $off_rps (on/off $ratio %, per round $(printf '%.1f' "$paired") %); median p99 on ${on_p99} ms, off ${off_p99} ms; worker CPU per request on ${on_cpu} us, off ${off_cpu} us (off/on $cpu_ratio %)"
done
