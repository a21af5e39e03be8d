#!/usr/bin/env python3
"""Dashboards that return data: every PromQL expression of the Grafana dashboard and of the
alert rules, evaluated against a real Prometheus that scrapes an example server (after
traffic: good requests, 5xx, slow ones) and a real prometheus-node-exporter, both on
loopback. Grafana's variables are substituted as Grafana would: `$job` by the job
(`api`), `$__rate_interval` by 1m. An alert rule's expression is evaluated without its
final comparison (`X > 0.05` as `X`): the rule has data to judge even when it does not fire.

Each expression must return a non-empty result, except those listed in NO_DATA_HERE with
the reason this machine gives none.

    scripts/e2e_dashboards.py --binary target/debug/examples/axum_workers
"""

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_prometheus import Prometheus, free_port, http_get, print_log_tail, report, stop_all, wait  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = "examples/stack/grafana/provisioning/dashboards/shmetrics.json"
RULES = ["examples/stack/prometheus/alerts.yml", "examples/deploy/prometheus/alerts.yml"]

# Series that exist only once something goes wrong, which this run does not provoke.
NO_DATA_HERE = {
    "shmetrics_cardinality_overflow_total": "appears at a family's first overflow; the example's "
    "families are bounded by their routes",
}


def strip_comparison(expr):
    """`X > 0.05` as `X`: an alert rule's expression without its final threshold."""
    m = re.match(r"(?s)^(.*?)\s*(>|<|>=|<=|==|!=)\s*[-+0-9.e]+\s*$", expr.strip())
    return m.group(1) if m else expr.strip()


def expressions():
    """(where, expression) of every dashboard target and alert rule."""
    import yaml
    out = []
    with open(os.path.join(ROOT, DASHBOARD)) as f:
        dash = json.load(f)
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append((f"panel {panel.get('title')!r}", t["expr"]))
    for path in RULES:
        with open(os.path.join(ROOT, path)) as f:
            rules = yaml.safe_load(f)
        for group in rules["groups"]:
            for rule in group["rules"]:
                out.append((f"{path}: {rule['alert']}", strip_comparison(rule["expr"])))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True, help="an example server (axum_workers or actix_workers)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="e2e-dashboards-")
    token = secrets.token_hex(16)
    app_port, prom_port, node_port = free_port(), free_port(), free_port()
    with open(os.path.join(work, "token"), "w") as f:
        f.write(token)
    with open(os.path.join(work, "prometheus.yml"), "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
scrape_configs:
  - job_name: api
    authorization: {{type: Bearer, credentials_file: token}}
    static_configs: [{{targets: ["127.0.0.1:{app_port}"]}}]
  - job_name: node
    static_configs: [{{targets: ["127.0.0.1:{node_port}"]}}]
""")
    log = open(os.path.join(work, "processes.log"), "w")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=os.path.join(work, "store"), METRICS_AUTH_TOKEN=token,
               RUST_LOG="warn")
    procs = []
    failures = []
    try:
        procs.append(subprocess.Popen([args.binary, "--workers", "2", "--port", str(app_port)],
                                      env=env, stdout=log, stderr=log))
        procs.append(subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{node_port}"],
                                      stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/tsdb",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=log, cwd=work))
        p = Prometheus(prom_port)
        wait("the server", lambda: http_get("127.0.0.1", app_port, "/health") == 200, timeout=60)
        wait("Prometheus", p.ready, timeout=60)
        wait("both targets up", lambda: len(p.query("up == 1")) == 2, timeout=60)
        # Traffic over several scrapes: rates need two samples of each series.
        for _ in range(4):
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: http_get("127.0.0.1", app_port, f"/users/{i}"), range(100)))
                list(pool.map(lambda i: http_get("127.0.0.1", app_port, "/error"), range(5)))
                list(pool.map(lambda i: http_get("127.0.0.1", app_port, "/slow?ms=50"), range(5)))
            time.sleep(2)
        with_data = 0
        for where, expr in expressions():
            query = expr.replace("$__rate_interval", "1m").replace("$job", "api")
            reason = next((r for k, r in NO_DATA_HERE.items() if k in query), None)
            try:
                result = p.query(query)
            except SystemExit as e:
                failures.append(f"{where}: {e}")
                continue
            if result:
                with_data += 1
            elif reason:
                print(f"dashboards: no data here, as expected: {where}: {query} ({reason})")
            else:
                failures.append(f"{where}: no data: {query}")
        print(f"dashboards: {with_data} of {len(expressions())} dashboard and alert expressions return data")
    except SystemExit:
        print_log_tail(os.path.join(work, "processes.log"))
        raise
    finally:
        stop_all(procs)
    report(failures, os.path.join(work, "processes.log"), work, "dashboards")


if __name__ == "__main__":
    main()
