#!/usr/bin/env python3
"""The layout of the source documents, for real on this machine: five APIs on each of four
hosts, one metrics directory per API per host, one Prometheus job per API with one target
per host.

Hosts are loopback addresses (127.0.1.1 to 127.0.1.4: all of 127.0.0.0/8 is this machine's
loopback); each API on each host is its own example server (2 workers) with its own
directory and token. The Prometheus configuration is the shipped
examples/deploy/prometheus/prometheus.yml with its targets pointed at those hosts, its
token files written, and a 1 s scrape interval; the shipped alerts.yml is loaded as is.

Checks, once Prometheus has scraped: all 20 targets are up; for every job and instance,
the sum of http_requests_total of the route equals the requests that host's API answered
(each host and API gets a different number, and one API on one host loses a worker to
SIGKILL in the middle); and each target's series carry the API's `api` label from the
configuration.

    scripts/e2e_fleet.py --binary target/debug/examples/axum_workers
"""

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_prometheus import Prometheus, children, free_port, report, stop_all, wait  # noqa: E402
from e2e_prometheus import http_get as get  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = [f"127.0.1.{i}" for i in range(1, 5)]


def port_free_on_all(port):
    for host in HOSTS:
        s = socket.socket()
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True, help="an example server (axum_workers or actix_workers)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="e2e-fleet-")
    with open(os.path.join(ROOT, "examples/deploy/prometheus/prometheus.yml")) as f:
        config = yaml.safe_load(f)
    jobs = [j for j in config["scrape_configs"] if j.get("static_configs")]
    apis = [j["job_name"] for j in jobs]
    # One port per API, the same on every host, as the shipped file has it.
    ports = {}
    for api in apis:
        port = free_port()
        while not port_free_on_all(port) or port in ports.values():
            port = free_port()
        ports[api] = port
    os.makedirs(os.path.join(work, "secrets"))
    tokens = {api: secrets.token_hex(16) for api in apis}
    for api, token in tokens.items():
        with open(os.path.join(work, "secrets", f"{api}.token"), "w") as f:
            f.write(token)
    for job in jobs:
        api = job["job_name"]
        for sc in job["static_configs"]:
            sc["targets"] = [f"{host}:{ports[api]}" for host in HOSTS]
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    shutil.copy(os.path.join(ROOT, "examples/deploy/prometheus/alerts.yml"), os.path.join(work, "alerts.yml"))
    with open(os.path.join(work, "prometheus.yml"), "w") as f:
        yaml.safe_dump(config, f)

    log = open(os.path.join(work, "servers.log"), "w")
    procs = []
    failures = []
    try:
        for host in HOSTS:
            for api in apis:
                store = os.path.join(work, "shm", host, api)
                os.makedirs(store)
                env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=store, METRICS_AUTH_TOKEN=tokens[api],
                           SHMETRICS_APPLICATION=api, RUST_LOG="warn")
                procs.append(subprocess.Popen(
                    [args.binary, "--workers", "2", "--host", host, "--port", str(ports[api]),
                     "--no-process-metrics"],
                    env=env, stdout=log, stderr=log))
        for host in HOSTS:
            for api in apis:
                wait(f"{api} on {host}", lambda: get(host, ports[api], "/health") == 200, timeout=120)
        prom_port = free_port()
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/tsdb",
             f"--web.listen-address=127.0.0.1:{prom_port}"], stdout=log, stderr=log, cwd=work))
        p = Prometheus(prom_port)
        wait("Prometheus", p.ready, timeout=60)

        # A different number of requests for each host and API.
        expected = {}
        for h, host in enumerate(HOSTS):
            for a, api in enumerate(apis):
                n = 3 + 5 * h + a
                answered = sum(get(host, ports[api], f"/users/{i}") == 200 for i in range(n))
                expected[(api, f"{host}:{ports[api]}")] = answered
                if answered != n:
                    failures.append(f"{api} on {host}: {answered} of {n} requests answered")

        # A worker of one API on one host killed with SIGKILL: what it counted stays, its
        # supervisor starts another, and the next requests count too.
        victim_host, victim_api = HOSTS[1], apis[0]
        server = procs[HOSTS.index(victim_host) * len(apis)]
        workers = children(server.pid)
        os.kill(workers[0], signal.SIGKILL)
        wait("the worker to be replaced", lambda: len(children(server.pid)) == 2 and workers[0] not in children(server.pid))
        more = sum(get(victim_host, ports[victim_api], f"/users/{i}") == 200 for i in range(4))
        expected[(victim_api, f"{victim_host}:{ports[victim_api]}")] += more
        print(f"fleet: killed worker {workers[0]} of {victim_api} on {victim_host}; {more} more requests answered")

        def totals():
            r = p.query('sum by (job, instance) (http_requests_total{path="/users/{id}"})')
            return {(s["metric"]["job"], s["metric"]["instance"]): int(float(s["value"][1])) for s in r}

        wait("Prometheus to scrape every target's totals", lambda: totals() == expected, timeout=60)
        got = totals()
        for key, n in sorted(expected.items()):
            if got.get(key) != n:
                failures.append(f"{key[0]} {key[1]}: {got.get(key)} in Prometheus, {n} answered")
        up = p.query("sum(up)")
        targets = p.query("count(up)")
        print(f"fleet: {len(HOSTS)} hosts x {len(apis)} APIs, {int(float(up[0]['value'][1]))} of "
              f"{int(float(targets[0]['value'][1]))} targets up")
        if float(up[0]["value"][1]) != len(HOSTS) * len(apis):
            failures.append(f"targets up: {up}")
        labelled = p.query('count by (job, api) (http_requests_total{path="/users/{id}"})')
        for s in labelled:
            if s["metric"].get("api") != s["metric"]["job"]:
                failures.append(f"series of job {s['metric']['job']} labelled api={s['metric'].get('api')}")
        for api in apis:
            line = ", ".join(f"{host.rsplit('.', 1)[1]}: {got.get((api, f'{host}:{ports[api]}'))}" for host in HOSTS)
            print(f"  {api} (job {api}), requests per host {line}")
        print(f"fleet: {sum(got.values())} requests in Prometheus, {sum(expected.values())} answered")
    finally:
        stop_all(procs)
    report(failures, os.path.join(work, "servers.log"), work, "fleet")


if __name__ == "__main__":
    main()
