#!/usr/bin/env python3
"""End to end beside a Python API: gunicorn (4 sync workers) serving a WSGI app that
counts through prometheus_client in multiprocess mode, two `shmetrics serve` exporters on
its directory (one with Python's liveness rule, one with `--python-liveness proc`), and a
real Prometheus scraping both every second, on loopback.

The gunicorn config has no `child_exit` hook calling `mark_process_dead`, as in a Sanic
deployment or most gunicorn ones: nothing removes a dead worker's `livesum` file. The
client sends a known number of requests; one worker is SIGKILLed while it holds a request
(its in-flight gauge at 1, gunicorn restarts it). Then, asked of Prometheus:

* `app_requests_total` summed equals the responses the client received, through the
  SIGKILL, on both exporters;
* with `--python-liveness proc` the killed worker's in-flight gauge is gone within one
  scrape (the sum is 0); with Python's rule it stays counted (1), as Python's collector
  would show it.

Needs gunicorn and prometheus_client (pip), prometheus (Debian), and the `shmetrics`
binary (`--binary`).
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_prometheus import Prometheus, free_port, report, request, stop_all, wait  # noqa: E402

APP = textwrap.dedent('''
    import os, time
    from prometheus_client import Counter, Gauge

    REQUESTS = Counter("app_requests", "Requests served", ["path"])
    IN_FLIGHT = Gauge("app_in_flight", "Requests being served", multiprocess_mode="livesum")

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        IN_FLIGHT.inc()
        try:
            if path == "/hold":
                # Tell the test which worker holds it, then hold until killed.
                with open(os.environ["HOLD_FILE"], "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(120)
            REQUESTS.labels(path).inc()
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        finally:
            IN_FLIGHT.dec()
''')


def in_flight_of(port):
    """The sum of app_in_flight in one scrape of an exporter on port."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    total = 0.0
    for line in body.splitlines():
        m = re.match(r"app_in_flight(\{[^}]*\})? (\S+)", line)
        if m:
            total += float(m.group(2))
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True, help="the shmetrics executable")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="e2e-python-")
    store = os.path.join(work, "prometheus")
    os.mkdir(store, 0o750)
    with open(os.path.join(work, "app.py"), "w") as f:
        f.write(APP)
    hold_file = os.path.join(work, "hold.pid")
    app_port, files_port, proc_port, prom_port = free_port(), free_port(), free_port(), free_port()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=store, HOLD_FILE=hold_file, RUST_LOG="warn")
    log = open(os.path.join(work, "processes.log"), "w")
    procs = []
    failures = []

    def start(cmd, **kw):
        p = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, **kw)
        procs.append(p)
        return p

    try:
        gunicorn = start([sys.executable, "-m", "gunicorn", "--workers", "4", "--timeout", "300",
                          "--bind", f"127.0.0.1:{app_port}", "app:app"], cwd=work)
        wait("gunicorn", lambda: request(app_port, "GET", "/warmup") == 200)
        sent = 1  # the warm-up
        start([args.binary, "serve", "--dir", store, "--listen", f"127.0.0.1:{files_port}"])
        start([args.binary, "serve", "--dir", store, "--listen", f"127.0.0.1:{proc_port}",
               "--python-liveness", "proc"])
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write(textwrap.dedent(f"""\
                global:
                  scrape_interval: 1s
                scrape_configs:
                  - job_name: files
                    static_configs: [{{targets: ["127.0.0.1:{files_port}"]}}]
                  - job_name: proc
                    static_configs: [{{targets: ["127.0.0.1:{proc_port}"]}}]
                """))
        start(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={work}/tsdb",
               f"--web.listen-address=127.0.0.1:{prom_port}"])
        p = Prometheus(prom_port)
        wait("Prometheus", p.ready, timeout=60)

        for i in range(200):
            path = ["/a", "/b", "/c", "/d"][i % 4]
            if request(app_port, "GET", path) == 200:
                sent += 1
        # One worker holds a request; it is killed with it.
        holder = start([sys.executable, "-c",
                        f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{app_port}/hold', timeout=300)"],
                       )
        wait("the held request", lambda: os.path.exists(hold_file) and open(hold_file).read().strip())
        victim = int(open(hold_file).read())
        wait("both exporters to see it in flight", lambda: all(
            float((p.query(f'sum(app_in_flight{{job="{job}"}})') or [{"value": [0, "0"]}])[0]["value"][1]) == 1
            for job in ("files", "proc")), timeout=30)
        os.kill(victim, signal.SIGKILL)
        print(f"killed worker {victim} with SIGKILL while it held a request")
        holder.kill()
        # Once gunicorn has reaped it, the very next scrape of the /proc exporter leaves it
        # out; the exporter that keeps Python's rule still counts it.
        wait("gunicorn to reap the killed worker", lambda: not os.path.exists(f"/proc/{victim}"), timeout=30)
        next_scrape = {job: in_flight_of(port) for job, port in (("files", files_port), ("proc", proc_port))}
        print(f"in flight at the first scrape after the SIGKILL: {next_scrape}")
        if next_scrape != {"files": 1.0, "proc": 0.0}:
            failures.append(f"first scrape after the SIGKILL: {next_scrape}, expected files 1, proc 0")
        for i in range(200):
            path = ["/a", "/b", "/c", "/d"][i % 4]
            if request(app_port, "GET", path) == 200:
                sent += 1
        time.sleep(3)  # three scrapes

        def value(expr):
            r = p.query(expr)
            return float(r[0]["value"][1]) if r else None

        for job in ("files", "proc"):
            total = value(f'sum(app_requests_total{{job="{job}"}})')
            print(f"{job}: app_requests_total {total}, the client received {sent}")
            if total != sent:
                failures.append(f"{job}: app_requests_total {total}, the client received {sent}")
        in_flight_files = value('sum(app_in_flight{job="files"})')
        in_flight_proc = value('sum(app_in_flight{job="proc"})')
        print(f"in flight after the SIGKILL: Python's rule {in_flight_files}, /proc liveness {in_flight_proc}")
        if in_flight_proc != 0:
            failures.append(f"--python-liveness proc: in flight {in_flight_proc}, expected 0")
        if in_flight_files != 1:
            failures.append(f"Python's rule: in flight {in_flight_files}, expected 1 (the dead worker's)")
        dead = value('shmetrics_python_dead_files{job="proc"}')
        if not dead:
            failures.append(f"shmetrics_python_dead_files on the proc exporter: {dead}")
        if gunicorn.poll() is not None:
            failures.append("gunicorn exited")
    finally:
        stop_all(procs)
    report(failures, os.path.join(work, "processes.log"), work, "python exporter")


if __name__ == "__main__":
    main()
