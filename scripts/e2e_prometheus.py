#!/usr/bin/env python3
"""End to end: a multi-worker example server and a real Prometheus, on loopback.

Starts the example (4 worker processes on one port, bearer-protected /metrics), a
Prometheus scraping it every second, sends a known number of requests per route, kills
one worker with SIGKILL midway (the supervisor restarts it), then asks Prometheus:

* the sum of http_requests_total per route and status equals the responses the client
  received;
* no counter ever went down (no resets, and the total never decreased between scrapes);
* the in-flight gauge is back to 0;
* every query of the Grafana dashboard and of the alert rules evaluates.

With `--exemplars`, every request carries a W3C `traceparent` header of its own and
Prometheus runs with `--enable-feature=exemplar-storage`: `/api/v1/query_exemplars` returns
exemplars for `http_request_duration_seconds_bucket` and `http_requests_total` whose
`trace_id`s are among those the client sent, each latency exemplar on the bucket of its value,
and each value within the latency the client asked of `/slow?ms=N` (plus a small overhead).

With `--native`, the server's latency histogram has native buckets too and Prometheus runs
with `--enable-feature=native-histograms` (it then scrapes protobuf and stores the native
histograms): histogram_count over the native series equals the responses received (route by
route), histogram_count(rate(...)) equals the rate of http_requests_total, histogram_sum of
the /slow route lies between the sleeps the client asked for and those plus a small
overhead each, and histogram_quantile(0.99, ...) of /slow lies within one bucket width of
the schema (a factor of 2^(1/8)) of the true 99th percentile of what the client sent.

The rule for requests in flight at the kill: a request the killed worker was handling
gets no response (the client sees the connection reset) and is not counted either, because
a request is recorded when its response body has been handed to the server, which a
killed handler never does. So received == counted, route by route; the requests that failed
are reported apart: they are exactly the /slow requests the killed worker held at the kill
(read from /proc: its established connections from the slow clients' ports).
"""

import argparse
import collections
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def request(port, method, path, timeout=20, ports=None, headers=None, host="127.0.0.1"):
    """Status of one request on a fresh connection, or None if it got no response. The
    connection's local port is added to `ports` when given."""
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        if ports is not None:
            c.connect()
            ports.add(c.sock.getsockname()[1])
        c.request(method, path, headers={"Connection": "close", "Content-Length": "0", **(headers or {})})
        r = c.getresponse()
        r.read()
        c.close()
        return r.status
    except (OSError, http.client.HTTPException):
        return None


def http_get(host, port, path, token=None):
    """Status of GET path on host:port (a fresh connection), or None without a response."""
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return request(port, "GET", path, timeout=30, headers=headers, host=host)


def stop_all(procs):
    """SIGTERM to every process still running (the last started first), then waits for each
    (20 s, then SIGKILL)."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def print_log_tail(log_path):
    """Prints the end of the processes' log (what a failure needs to be understood)."""
    with open(log_path) as f:
        print(f.read()[-3000:])


def report(failures, log_path, work, name):
    """Exits 1 with the failures and the end of the processes' log, or prints `name: ok`
    and removes the work directory."""
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        print_log_tail(log_path)
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)
    print(f"{name}: ok")


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def established(pid, port, peers):
    """How many established TCP connections to local `port` from one of the local ports
    `peers` the process `pid` holds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                    if (state == "01" and int(local.rsplit(":", 1)[1], 16) == port
                            and int(remote.rsplit(":", 1)[1], 16) in peers):
                        inodes.add(inode)
        except OSError:
            pass
    held = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held += 1
    except OSError:
        pass
    return held


def wait(what, ok, timeout=30, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = ok()
        if v:
            return v
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}")


class Prometheus:
    # Answers 200 once it serves queries.
    READY = "/-/ready"

    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path, **params):
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def query(self, expr, **extra):
        r = self.get("/api/v1/query", query=expr, **extra)
        if r.get("status") != "success":
            raise SystemExit(f"query failed: {expr}: {r}")
        return r["data"]["result"]

    def ready(self):
        try:
            with urllib.request.urlopen(self.base + self.READY, timeout=2) as r:
                return r.status == 200
        except OSError:
            return False


def check_exemplars(p, name, traces, end, failures):
    """The exemplar checks (see the module doc)."""
    def query(expr):
        r = p.get("/api/v1/query_exemplars", query=expr, start=str(end - 600), end=str(time.time()))
        if r.get("status") != "success":
            raise SystemExit(f"query_exemplars failed: {expr}: {r}")
        return r["data"]

    latency = query('http_request_duration_seconds_bucket{job="api"}')
    buckets = {}
    for group in latency:
        le = float(group["seriesLabels"]["le"])
        path = group["seriesLabels"]["path"]
        bounds = sorted(float(g["seriesLabels"]["le"]) for g in latency) + [0.0]
        for e in group["exemplars"]:
            trace = e["labels"].get("trace_id")
            value = float(e["value"])
            buckets[(path, le)] = buckets.get((path, le), 0) + 1
            if trace not in traces:
                failures.append(f"latency exemplar with a trace id the client never sent: {e}")
                continue
            route, asked = traces[trace]
            if route != path:
                failures.append(f"exemplar of trace {trace} ({route}) on path {path}")
            if value > le:
                failures.append(f"exemplar value {value} above its bucket's bound {le}")
            lower = max([b for b in bounds if b < le], default=0.0)
            if not value > lower and lower > 0:
                failures.append(f"exemplar value {value} below its bucket ({lower}, {le}]")
            if asked is not None and not asked <= value <= asked + 0.25:
                failures.append(f"/slow?ms={int(asked * 1000)} exemplar value {value}")
    slow = sorted(le for (path, le) in buckets if path == "/slow")
    print(f"{name}: latency exemplars stored by Prometheus: {sum(buckets.values())}, "
          f"on /slow buckets {slow}")
    if len(slow) < 3:
        failures.append(f"latency exemplars on only {len(slow)} /slow buckets: {buckets}")
    counters = query('http_requests_total{job="api"}')
    sent = [e["labels"].get("trace_id") for g in counters for e in g["exemplars"]]
    print(f"{name}: request counter exemplars: {len(sent)}, all sent by the client: "
          f"{all(t in traces for t in sent)}")
    if not sent or any(t not in traces for t in sent):
        failures.append(f"request counter exemplars: {sent[:5]}")


def check_native(p, name, received, slept, failures):
    """The native histogram checks (see the module doc)."""
    series = p.query('http_request_duration_seconds{job="api"}')
    if not series or any("histogram" not in r for r in series):
        failures.append(f"the latency series are not native histograms in Prometheus: {series[:1]}")
        return
    counts = {r["metric"]["path"]: int(float(r["value"][1])) for r in p.query(
        'histogram_count(sum by (path) (http_request_duration_seconds{job="api"}))')}
    by_route = collections.Counter()
    for (route, _status), n in received.items():
        by_route[route] += n
    for route in sorted(set(by_route) | set(counts)):
        print(f"{name}: native count {route:<14} received {by_route.get(route, 0):>5} counted {counts.get(route, 0):>5}")
        if by_route.get(route, 0) != counts.get(route, 0):
            failures.append(f"native histogram_count of {route}: {counts.get(route)} != received {by_route.get(route)}")
    # rate() extrapolates to the window's edges, floats and native histograms slightly
    # otherwise: the two rates agree to within 2 %.
    at = str(time.time())
    hist_rate = p.query('sum(histogram_count(rate(http_request_duration_seconds{job="api"}[1m])))', time=at)
    count_rate = p.query('sum(rate(http_requests_total{job="api"}[1m]))', time=at)
    hr = float(hist_rate[0]["value"][1]) if hist_rate else float("nan")
    cr = float(count_rate[0]["value"][1]) if count_rate else float("nan")
    print(f"{name}: histogram_count(rate(...[1m])) = {hr:.3f}/s, rate(http_requests_total[1m]) = {cr:.3f}/s")
    if not (cr > 0 and abs(hr - cr) <= 0.02 * cr):
        failures.append(f"histogram_count(rate(...)) {hr} differs from rate(http_requests_total) {cr}")
    # /slow: the client knows each latency to within the server's overhead.
    s = p.query('histogram_sum(sum(http_request_duration_seconds{job="api",path="/slow"}))')
    got_sum = float(s[0]["value"][1]) if s else float("nan")
    low, high = sum(slept), sum(slept) + 0.25 * len(slept)
    print(f"{name}: /slow histogram_sum {got_sum:.3f}s, sleeps asked {low:.3f}s (+ at most 0.25s each)")
    if not low <= got_sum <= high:
        failures.append(f"/slow histogram_sum {got_sum} outside [{low}, {high}]")
    ordered = sorted(slept)
    true_q = ordered[max(0, -(-99 * len(ordered) // 100) - 1)]
    q = p.query('histogram_quantile(0.99, sum(http_request_duration_seconds{job="api",path="/slow"}))')
    got_q = float(q[0]["value"][1]) if q else float("nan")
    width = 2 ** (1 / 8)  # schema 3: one bucket
    print(f"{name}: /slow p99 from the native histogram {got_q:.4f}s, true {true_q:.4f}s "
          f"(+ overhead), allowed [{true_q / width:.4f}, {(true_q + 0.25) * width:.4f}]")
    if not true_q / width <= got_q <= (true_q + 0.25) * width:
        failures.append(f"/slow histogram_quantile(0.99) {got_q} not within a bucket of {true_q}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--native", action="store_true", help="native histograms end to end")
    ap.add_argument("--exemplars", action="store_true", help="exemplars end to end")
    args = ap.parse_args()
    name = os.path.basename(args.binary) + (" (native)" if args.native else "") + (
        " (exemplars)" if args.exemplars else "")
    work = tempfile.mkdtemp(prefix=f"e2e-{os.path.basename(args.binary)}-")
    token = secrets.token_hex(16)
    app_port, prom_port = free_port(), free_port()
    failures = []

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=os.path.join(work, "store"),
               METRICS_AUTH_TOKEN=token, RUST_LOG="warn")
    log = open(os.path.join(work, "server.log"), "w")
    server = subprocess.Popen([args.binary, "--workers", str(args.workers), "--port", str(app_port),
                               "--host", "127.0.0.1"] + (["--native-histograms"] if args.native else []),
                              env=env, stdout=log, stderr=log)
    received = collections.Counter()  # (route, status) -> responses
    errors = collections.Counter()    # route -> requests without a response
    slept = []                        # seconds asked of each /slow request that was answered
    traces = {}                       # trace id sent -> (route, seconds asked of /slow or None)
    lock = threading.Lock()

    def send(method, path, route, ports=None):
        headers = None
        if args.exemplars:
            trace = secrets.token_hex(16)
            with lock:
                traces[trace] = (route, int(path.split("ms=")[1]) / 1000 if "ms=" in path else None)
            headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
        status = request(app_port, method, path, ports=ports, headers=headers)
        with lock:
            if status is None:
                errors[route] += 1
            else:
                received[(route, str(status))] += 1
                if route == "/slow":
                    slept.append(int(path.split("ms=")[1]) / 1000)

    try:
        wait("the server", lambda: request(app_port, "GET", "/nope-start") == 404)
        received[("unmatched", "404")] += 1
        wait(f"{args.workers} workers", lambda: len(children(server.pid)) == args.workers)
        unauth = request(app_port, "GET", "/metrics")
        if unauth != 401:
            failures.append(f"/metrics without the token answered {unauth}, expected 401")

        # Prometheus, scraping every second with the bearer token.
        token_file = os.path.join(work, "token")
        with open(token_file, "w") as f:
            f.write(token)
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: api
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {token_file}
    static_configs:
      - targets: ["127.0.0.1:{app_port}"]
""")
        prom_log = open(os.path.join(work, "prometheus.log"), "w")
        prom = subprocess.Popen(["prometheus", f"--config.file={config}",
                                 f"--storage.tsdb.path={os.path.join(work, 'data')}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]
                                + (["--enable-feature=native-histograms"] if args.native else [])
                                + (["--enable-feature=exemplar-storage"] if args.exemplars else []),
                                stdout=prom_log, stderr=prom_log)
        p = Prometheus(prom_port)
        try:
            wait("Prometheus", p.ready)
            wait("the first scrape", lambda: any(r["value"][1] == "1" for r in p.query('up{job="api"}')))

            # The traffic: a known number of requests per route, from 4 client threads.
            plan = ([("GET", "/health", "/health")] * 100
                    + [("GET", f"/users/{i}", "/users/{id}") for i in range(200)]
                    + [("POST", "/orders", "/orders")] * 60
                    + [("GET", "/error", "/error")] * 40
                    + [("GET", "/slow?ms=20", "/slow")] * 30
                    + ([("GET", "/slow?ms=150", "/slow")] * 20 + [("GET", "/slow?ms=450", "/slow")] * 10
                       if args.native else [])
                    + ([("GET", f"/slow?ms={ms}", "/slow") for ms in (40, 70, 200, 350, 700) for _ in range(6)]
                       if args.exemplars else [])
                    + [("GET", f"/nope/{i}", "unmatched") for i in range(50)])
            plan = plan[::2] + plan[1::2]  # interleave the routes

            def run(items):
                for it in items:
                    send(*it)

            def batch(items):
                ts = [threading.Thread(target=run, args=(items[i::4],)) for i in range(4)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()

            half = len(plan) // 2
            batch(plan[:half])

            # Midway: slow requests in flight, then SIGKILL a worker that holds some of them
            # (one accept queue: which worker took which connection is the kernel's choice, so
            # ask /proc which worker holds established connections to the port).
            slow_ports = set()
            slow = [threading.Thread(target=send, args=("GET", "/slow?ms=3000", "/slow", slow_ports))
                    for _ in range(12)]
            for t in slow:
                t.start()

            def busiest():
                held = {w: established(w, app_port, set(slow_ports)) for w in children(server.pid)}
                w = max(held, key=held.get, default=None)
                return w if w is not None and held[w] > 0 else None
            victim = wait("a worker holding a slow request", busiest, timeout=2, step=0.05)
            time.sleep(0.3)
            held = established(victim, app_port, set(slow_ports))
            os.kill(victim, signal.SIGKILL)
            print(f"{name}: killed worker {victim} with SIGKILL, holding {held} of the slow requests")
            wait("the restarted worker",
                 lambda: len(children(server.pid)) == args.workers and victim not in children(server.pid))
            batch(plan[half:])
            for t in slow:
                t.join()
            end = time.time()

            # Until Prometheus has scraped after the last response.
            wait("a scrape after the traffic", lambda: any(
                float(r["value"][1]) > end + 1 for r in p.query('timestamp(up{job="api"})')), timeout=30)
            wait("a successful scrape after the traffic", lambda: any(
                r["value"][1] == "1" for r in p.query('up{job="api"}')), timeout=30)

            counted = {(r["metric"]["path"], r["metric"]["status"]): int(float(r["value"][1]))
                       for r in p.query('sum by (path, status) (http_requests_total{job="api"})')}
            keys = sorted(set(counted) | set(received))
            print(f"{name}: {'route':<14} {'status':>6} {'received':>9} {'counted':>8}")
            for k in keys:
                print(f"{name}: {k[0]:<14} {k[1]:>6} {received.get(k, 0):>9} {counted.get(k, 0):>8}")
                if received.get(k, 0) != counted.get(k, 0):
                    failures.append(f"{k}: client received {received.get(k, 0)}, Prometheus counted {counted.get(k, 0)}")
            print(f"{name}: requests without a response (in flight on the killed worker): {dict(errors)}")
            if set(errors) - {"/slow"}:
                failures.append(f"requests other than /slow failed: {dict(errors)}")
            if sum(errors.values()) != held:
                failures.append(f"the killed worker held {held} requests, but {sum(errors.values())} got no response")

            resets = p.query('sum(resets(http_requests_total{job="api"}[10m]))')
            if resets and float(resets[0]["value"][1]) != 0:
                failures.append(f"http_requests_total went down {resets[0]['value'][1]} times")
            rng = p.get("/api/v1/query_range", query='sum(http_requests_total{job="api"})',
                        start=str(end - 120), end=str(time.time()), step="1")
            for series in rng["data"]["result"]:
                values = [float(v) for _, v in series["values"]]
                if any(b < a for a, b in zip(values, values[1:])):
                    failures.append(f"the total decreased between scrapes: {values}")
                print(f"{name}: total over {len(values)} scrapes: {int(values[0])} .. {int(values[-1])}, never decreasing")
            in_flight = p.query('sum(http_requests_in_flight{job="api"})')
            if not in_flight or float(in_flight[0]["value"][1]) != 0:
                failures.append(f"in-flight gauge is {in_flight}, expected 0")

            # Process metrics: the service's, and one series per worker id (the killed
            # and restarted worker continues its own: no fifth series).
            cpu = p.query('process_cpu_seconds_total{job="api"}')
            if not cpu or float(cpu[0]["value"][1]) <= 0:
                failures.append(f"process_cpu_seconds_total is {cpu}")
            per_worker = sorted(r["metric"].get("worker", "") for r in p.query('process_worker_resident_memory_bytes{job="api"}'))
            if per_worker != [str(w) for w in range(args.workers)]:
                failures.append(f"per-worker resident memory series: {per_worker}")
            rss = p.query('process_resident_memory_bytes{job="api"}')
            by_worker = p.query('sum(process_worker_resident_memory_bytes{job="api"})')
            if not rss or not by_worker:
                failures.append(f"resident memory: service {rss}, workers {by_worker}")
            else:
                # Sampled each second: the sum of the workers is the service's, give or take
                # what changed between their samples.
                total, parts = float(rss[0]["value"][1]), float(by_worker[0]["value"][1])
                print(f"{name}: service resident memory {total / 2**20:.1f} MiB, workers {parts / 2**20:.1f} MiB, CPU {float(cpu[0]['value'][1]):.2f} s")
                if abs(total - parts) > 0.2 * total:
                    failures.append(f"service RSS {total} vs the workers' sum {parts}")

            if args.native:
                check_native(p, name, received, slept, failures)
            if args.exemplars:
                check_exemplars(p, name, traces, end, failures)

            # Every dashboard and alert query runs against real data.
            exprs = []
            dash = json.load(open(os.path.join(ROOT, "examples/stack/grafana/provisioning/dashboards/shmetrics.json")))
            exprs += [t["expr"] for pnl in dash["panels"] for t in pnl.get("targets", [])]
            rules = open(os.path.join(ROOT, "examples/stack/prometheus/alerts.yml")).read()
            exprs += [m.strip() for m in re.findall(r"expr: \|\n((?:          .*\n)+)", rules)]
            exprs += re.findall(r"expr: ([^|\n].*)", rules)
            for e in exprs:
                e = e.replace("$__rate_interval", "1m").replace("$job", ".*")
                try:
                    p.query(e)
                except SystemExit as err:
                    failures.append(str(err))
            print(f"{name}: {len(exprs)} dashboard and alert queries evaluate")
            for m in ("shmetrics_live_files", "shmetrics_scrape_duration_seconds", "shmetrics_store_errors_total"):
                if not p.query(m + '{job="api"}'):
                    failures.append(f"self-metric {m} missing")
        finally:
            prom.send_signal(signal.SIGTERM)
            prom.wait(timeout=30)

        # Graceful stop: SIGTERM to the supervisor stops every worker.
        workers = children(server.pid)
        server.send_signal(signal.SIGTERM)
        rc = server.wait(timeout=30)
        if rc != 0:
            failures.append(f"supervisor exited with {rc} on SIGTERM")
        left = [w for w in workers if os.path.exists(f"/proc/{w}")]
        if left:
            failures.append(f"workers still running after the supervisor stopped: {left}")
    finally:
        if server.poll() is None:
            server.kill()
        log.close()

    if failures:
        print(f"{name}: FAILED")
        for f in failures:
            print(f"  - {f}")
        print(f"  (logs in {work})")
        sys.exit(1)
    print(f"{name}: ok")


if __name__ == "__main__":
    main()
