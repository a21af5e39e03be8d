#!/usr/bin/env python3
"""Alerts delivered, for real: Prometheus evaluates the shipped alert rules
(examples/deploy/prometheus/alerts.yml) against an example server, Alertmanager routes what
fires to a webhook receiver (a small HTTP server here), and the server is driven into each
condition this machine can reach, then out of it:

* HighServerErrorRatio: requests to /error among the others; resolved by many good ones.
* HighLatencyP95: requests to /slow?ms=1200; resolved by many fast ones.
* TargetDown: the server's supervisor stopped with SIGTERM; resolved by starting it again.
* MetricsCorruptFiles: a damaged file put in the metrics directory; resolved by removing it.
* MetricsFilesNotRead: a file of a newer format version; resolved by removing it.

Each must reach the webhook firing, with its labels (alertname, severity, job) and its
summary annotation, then resolved. The rules are the shipped ones with every `for:` set to
0s by a test-only copy (the shipped file is not edited). Not reached here: WorkerMemoryHigh
(a worker above 1 GiB resident for 15 minutes), MetricsStoreErrors (a full /dev/shm) and
MetricsCardinalityOverflow (the example's families are bounded by their routes).

    scripts/e2e_alerts.py --binary target/debug/examples/axum_workers
"""

import argparse
import http.server
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_prometheus import Prometheus, free_port, http_get, print_log_tail, report, stop_all, wait  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Webhook:
    """Alertmanager's webhook receiver: keeps every alert of every notification."""

    def __init__(self):
        self.alerts = []
        self.lock = threading.Lock()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with hook.lock:
                    hook.alerts.extend(body["alerts"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seen(self, alertname, status):
        with self.lock:
            return [a for a in self.alerts if a["labels"].get("alertname") == alertname and a["status"] == status]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True, help="an example server (axum_workers or actix_workers)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="e2e-alerts-")
    token = secrets.token_hex(16)
    app_port, prom_port, am_port = free_port(), free_port(), free_port()
    store = os.path.join(work, "store")
    failures = []
    hook = Webhook()

    # The shipped rules, every `for:` at 0s.
    with open(os.path.join(ROOT, "examples/deploy/prometheus/alerts.yml")) as f:
        rules = yaml.safe_load(f)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "0s"
    with open(os.path.join(work, "alerts.yml"), "w") as f:
        yaml.safe_dump(rules, f)
    with open(os.path.join(work, "token"), "w") as f:
        f.write(token)
    with open(os.path.join(work, "prometheus.yml"), "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [alerts.yml]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["127.0.0.1:{am_port}"]}}]
scrape_configs:
  - job_name: api
    authorization: {{type: Bearer, credentials_file: token}}
    static_configs: [{{targets: ["127.0.0.1:{app_port}"]}}]
""")
    with open(os.path.join(work, "alertmanager.yml"), "w") as f:
        f.write(f"""route:
  receiver: webhook
  group_by: ['...']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: webhook
    webhook_configs:
      - url: http://127.0.0.1:{hook.port}/
        send_resolved: true
""")
    log = open(os.path.join(work, "processes.log"), "w")
    procs = []
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=store, METRICS_AUTH_TOKEN=token, RUST_LOG="warn")

    def start_server():
        p = subprocess.Popen([args.binary, "--workers", "2", "--host", "127.0.0.1", "--port", str(app_port)],
                             env=env, stdout=log, stderr=log)
        procs.append(p)
        wait("the server", lambda: get(app_port, "/health") == 200, timeout=60)
        return p

    def expect(alertname, status, timeout=90):
        try:
            wait(f"{alertname} {status} at the webhook", lambda: hook.seen(alertname, status), timeout=timeout)
        except SystemExit:
            import urllib.request
            print("Prometheus' alerts:", json.dumps(p.get("/api/v1/alerts"))[:2000])
            print("Alertmanager's:", urllib.request.urlopen(f"http://127.0.0.1:{am_port}/api/v2/alerts").read()[:2000])
            print("the webhook's:", hook.alerts[:5])
            raise
        alert = hook.seen(alertname, status)[0]
        labels, annotations = alert["labels"], alert["annotations"]
        if labels.get("job") != "api" or not labels.get("severity") or not annotations.get("summary"):
            failures.append(f"{alertname} {status}: labels {labels}, annotations {annotations}")
        print(f"alerts: {alertname} {status}: severity={labels.get('severity')} job={labels.get('job')} "
              f"summary={annotations.get('summary')!r}")

    try:
        server = start_server()
        procs.append(subprocess.Popen(
            ["prometheus-alertmanager", f"--config.file={work}/alertmanager.yml",
             f"--storage.path={work}/am", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="], stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/tsdb",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=log, cwd=work))
        p = Prometheus(prom_port)
        wait("Prometheus", p.ready, timeout=60)
        wait("Alertmanager", lambda: get(am_port, "/-/ready") == 200, timeout=60)
        wait("the first scrapes", lambda: p.query('up{job="api"} == 1'), timeout=30)

        # 5xx and slow requests: half of the requests fail, a third take 1.2 s. One of each
        # first, scraped before the others: a series' first sample is not an increase.
        get(app_port, "/error")
        get(app_port, "/slow?ms=10")
        wait("the first 5xx scraped", lambda: p.query('http_requests_total{job="api",status="500"}'), timeout=30)
        with ThreadPoolExecutor(20) as pool:
            list(pool.map(lambda i: get(app_port, "/error"), range(40)))
            list(pool.map(lambda i: get(app_port, "/slow?ms=1200"), range(40)))
        expect("HighServerErrorRatio", "firing")
        expect("HighLatencyP95", "firing")
        # Many fast, good requests: both ratios fall under their thresholds.
        with ThreadPoolExecutor(8) as pool:
            ok = sum(s == 200 for s in pool.map(lambda i: get(app_port, f"/users/{i}"), range(4000)))
        print(f"alerts: {ok} good requests sent")
        expect("HighServerErrorRatio", "resolved", timeout=120)
        expect("HighLatencyP95", "resolved", timeout=120)

        # Files the store's reader skips.
        corrupt = os.path.join(store, "broken.shm")
        with open(corrupt, "wb") as f:
            f.write(b"not a store file at all, long enough to be read" * 4)
        expect("MetricsCorruptFiles", "firing")
        os.unlink(corrupt)
        expect("MetricsCorruptFiles", "resolved")
        newer = os.path.join(store, "w-1-00000000000000ff.shm")
        header = b"SHMETRIC" + struct.pack("<II", 99, 128) + struct.pack("<Q", 128) + bytes(104)
        with open(newer, "wb") as f:
            f.write(header)
        expect("MetricsFilesNotRead", "firing")
        os.unlink(newer)
        expect("MetricsFilesNotRead", "resolved")

        # The supervisor stopped, then started again.
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        expect("TargetDown", "firing")
        start_server()
        expect("TargetDown", "resolved")
    except SystemExit:
        print_log_tail(os.path.join(work, "processes.log"))
        raise
    finally:
        stop_all(procs)
        hook.server.shutdown()
    report(failures, os.path.join(work, "processes.log"), work, "alerts")


def get(port, path):
    return http_get("127.0.0.1", port, path)


if __name__ == "__main__":
    main()
