#!/usr/bin/env python3
"""One central store for a fleet: two hosts (loopback addresses 127.0.2.1 and 127.0.2.2),
each an example server scraped by its own Prometheus in agent mode
(--enable-feature=agent) built from the shipped examples/deploy/prometheus/agent.yml, both
sending with remote_write to one VictoriaMetrics single-node, all on loopback.

Host 1's agent is Prometheus in agent mode, host 2's VictoriaMetrics' vmagent (the same
scrape configuration). Checks:
* the totals per host in the central store equal the requests each host answered;
* twice, the central store goes down while both hosts keep serving, each agent is restarted
  (stopped with SIGTERM the first time, killed with SIGKILL the second) and the store comes
  back: the totals are exact again, and the samples each agent scraped during the outage are
  reported kept or lost. vmagent stopped with SIGTERM must keep them (it writes its queue to
  -remoteWrite.tmpDataPath). Prometheus' agent sends nothing scraped before a restart
  (prometheus/prometheus#8809), and after a SIGKILL vmagent loses what it held in memory:
  both are printed, not failed, since the counters' totals stay exact (the next scrape
  carries them) and only the outage's resolution is lost.

    scripts/e2e_central.py --binary target/debug/examples/axum_workers
"""

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_prometheus import Prometheus, free_port, print_log_tail, report, stop_all, wait  # noqa: E402
from e2e_prometheus import http_get as get  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOSTS = ["127.0.2.1", "127.0.2.2"]
# The agent of each host: Prometheus in agent mode, and VictoriaMetrics' vmagent.
AGENTS = ["prometheus", "vmagent"]


class Central(Prometheus):
    """VictoriaMetrics' Prometheus query API. A query it does not answer (it is down, as
    the test makes it) is None."""

    READY = "/health"

    def query(self, expr, **extra):
        try:
            return super().query(expr, **extra)
        except OSError:
            return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True, help="an example server (axum_workers or actix_workers)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="e2e-central-")
    vm_port, app_port = free_port(), free_port()
    token = secrets.token_hex(16)
    with open(os.path.join(work, "token"), "w") as f:
        f.write(token)
    with open(os.path.join(ROOT, "examples/deploy/prometheus/agent.yml")) as f:
        shipped = yaml.safe_load(f)
    agent_ports = {}
    for i, host in enumerate(HOSTS):
        config = dict(shipped)
        config["global"] = dict(shipped["global"], scrape_interval="1s",
                                external_labels={"host": f"srv{i + 1}"})
        job = dict(shipped["scrape_configs"][0])
        job["authorization"] = {"type": "Bearer", "credentials_file": os.path.join(work, "token")}
        job["static_configs"] = [{"targets": [f"{host}:{app_port}"], "labels": {"api": job["job_name"]}}]
        config["scrape_configs"] = [job]
        config["remote_write"] = [dict(shipped["remote_write"][0], url=f"http://127.0.0.1:{vm_port}/api/v1/write")]
        config["remote_write"][0]["queue_config"] = {"max_backoff": "1s"}
        with open(os.path.join(work, f"agent{i + 1}.yml"), "w") as f:
            yaml.safe_dump(config, f)
        agent_ports[i] = free_port()

    log = open(os.path.join(work, "processes.log"), "w")
    procs = []
    failures = []

    def start_vm():
        p = subprocess.Popen(["victoria-metrics", f"-storageDataPath={work}/vm", f"-httpListenAddr=127.0.0.1:{vm_port}",
                              "-retentionPeriod=1d", "-search.latencyOffset=0s", "-search.disableCache"],
                             stdout=log, stderr=log)
        procs.append(p)
        wait("VictoriaMetrics", vm.ready, timeout=60)
        return p

    def start_agent(i):
        if AGENTS[i] == "prometheus":
            cmd = ["prometheus", "--enable-feature=agent", f"--config.file={work}/agent{i + 1}.yml",
                   f"--storage.agent.path={work}/agent{i + 1}", f"--web.listen-address=127.0.0.1:{agent_ports[i]}",
                   # On SIGTERM, wait at most 5 s (not 1 min) for the store to take what is queued.
                   "--storage.remote.flush-deadline=5s"]
            ready = "/-/ready"
        else:
            # vmagent reads the same scrape configuration (its remote_write block aside).
            cmd = ["vmagent", f"-promscrape.config={work}/agent{i + 1}.yml", "-promscrape.config.strictParse=false",
                   f"-remoteWrite.url=http://127.0.0.1:{vm_port}/api/v1/write",
                   f"-remoteWrite.tmpDataPath={work}/agent{i + 1}", f"-httpListenAddr=127.0.0.1:{agent_ports[i]}"]
            ready = "/health"
        p = subprocess.Popen(cmd, stdout=log, stderr=log)
        procs.append(p)
        wait(f"agent {i + 1}", lambda: get("127.0.0.1", agent_ports[i], ready) == 200, timeout=60)
        return p

    vm = Central(vm_port)
    expected = {f"srv{i + 1}": 0 for i in range(len(HOSTS))}
    results = {}

    def traffic(i, n):
        answered = sum(get(HOSTS[i], app_port, f"/users/{k}") == 200 for k in range(n))
        expected[f"srv{i + 1}"] += answered
        if answered != n:
            failures.append(f"host {i + 1}: {answered} of {n} requests answered")

    def totals():
        r = vm.query('sum by (host) (http_requests_total{path="/users/{id}"})') or []
        return {s["metric"].get("host"): int(float(s["value"][1])) for s in r}

    try:
        vm_proc = start_vm()
        for i, host in enumerate(HOSTS):
            env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=os.path.join(work, f"shm{i + 1}"),
                       METRICS_AUTH_TOKEN=token, RUST_LOG="warn")
            procs.append(subprocess.Popen([args.binary, "--workers", "2", "--host", host, "--port", str(app_port),
                                           "--no-process-metrics"], env=env, stdout=log, stderr=log))
            wait(f"host {i + 1}", lambda: get(host, app_port, "/health") == 200, timeout=60)
        agents = [start_agent(i) for i in range(len(HOSTS))]

        traffic(0, 7)
        traffic(1, 11)
        wait("the central store's totals", lambda: totals() == expected, timeout=60)
        print(f"central: totals per host in VictoriaMetrics {totals()}, answered {expected}")

        # Twice: the central store goes down, both hosts keep serving and their agents keep
        # scraping; each agent is restarted (SIGTERM, then SIGKILL the second time) before
        # the store comes back.
        for sig, how in ((signal.SIGTERM, "stopped with SIGTERM"), (signal.SIGKILL, "killed with SIGKILL")):
            vm_proc.send_signal(signal.SIGTERM)
            vm_proc.wait(timeout=30)
            down_from = time.time()
            for _ in range(4):
                traffic(0, 5)
                traffic(1, 3)
                time.sleep(1)
            time.sleep(2)
            down_to = time.time()
            for i in range(len(HOSTS)):
                agents[i].send_signal(sig)
                agents[i].wait(timeout=30)
                agents[i] = start_agent(i)
            vm_proc = start_vm()
            wait("the central store's totals after the outage", lambda: totals() == expected, timeout=90)
            print(f"central: outage, agents {how} and started again: totals {totals()}, answered {expected}")
            if totals() != expected:
                failures.append(f"{how}: totals {totals()}, answered {expected}")
            # Samples of the outage, scraped before the restart: in the store once the agent
            # has sent what it kept.
            window = max(1, int(down_to - down_from) - 1)
            for i, agent in enumerate(AGENTS):
                time.sleep(2)
                r = vm.query(f'count_over_time(up{{host="srv{i + 1}"}}[{window}s])', time=f"{down_to:.3f}")
                outage = int(float(r[0]["value"][1])) if r else 0
                kept = outage >= window - 2
                print(f"central: {agent} {how}: {outage} samples of `up` from the {window} s the store was down "
                      f"({'kept' if kept else 'lost'})")
                results[(agent, how)] = kept
        if not results[("vmagent", "stopped with SIGTERM")]:
            failures.append("vmagent restarted with SIGTERM lost the outage's samples")
    except SystemExit:
        print_log_tail(os.path.join(work, "processes.log"))
        raise
    finally:
        stop_all(procs)
    report(failures, os.path.join(work, "processes.log"), work, "central")


if __name__ == "__main__":
    main()
