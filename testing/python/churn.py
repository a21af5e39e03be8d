"""Short-lived prometheus_client writers in multiprocess mode, as a pre-fork server with
`max_requests` makes them: each child serves a few "requests" and exits; the parent marks
it dead as gunicorn's `child_exit` hook does (`mark_process_dead`: its live gauges go).

    churn.py DIR WRITERS CONCURRENCY [MS]   children, at most CONCURRENCY at once, each
                                            serving for MS milliseconds; prints the
                                            expected totals as JSON
    churn.py one DIR                   one writer that stays until its stdin closes

Values are exact in binary (integers, quarters), so sums do not depend on the order in
which a reader adds files up.
"""

import json
import os
import sys
import time

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client import multiprocess

JOBS = Counter("churn_jobs", "Jobs served", ["queue"])
LATENCY = Histogram("churn_latency_seconds", "Latency", ["route"], buckets=(0.25, 1.0, 4.0))
IN_FLIGHT = Gauge("churn_in_flight", "Requests in flight", multiprocess_mode="livesum")


def serve(n, ms=0):
    """What child number n writes, taking ms milliseconds."""
    jobs = 1 + n % 7
    IN_FLIGHT.inc()
    time.sleep(ms / 1000)
    JOBS.labels(queue="mail").inc(jobs)
    JOBS.labels(queue="sms").inc()
    obs = [0.25 * (1 + (n + i) % 20) for i in range(3)]
    for v in obs:
        LATENCY.labels(route="/users/{id}").observe(v)
    IN_FLIGHT.dec()


def churn(path, writers, concurrency, ms):
    running = {}
    mail = sms = count = 0
    total = 0.0
    buckets = {0.25: 0, 1.0: 0, 4.0: 0, float("inf"): 0}
    for n in range(writers):
        while len(running) >= concurrency:
            pid, status = os.wait()
            assert status == 0, status
            multiprocess.mark_process_dead(pid, path)
            running.pop(pid)
        jobs = 1 + n % 7
        obs = [0.25 * (1 + (n + i) % 20) for i in range(3)]
        mail += jobs
        sms += 1
        count += len(obs)
        total += sum(obs)
        for v in obs:
            for b in buckets:
                if v <= b:
                    buckets[b] += 1
                    break
        pid = os.fork()
        if pid == 0:
            try:
                serve(n, ms)
            finally:
                os._exit(0)
        running[pid] = n
    while running:
        pid, status = os.wait()
        assert status == 0, status
        multiprocess.mark_process_dead(pid, path)
        running.pop(pid)
    json.dump(
        {
            "mail": mail,
            "sms": sms,
            "count": count,
            "sum": total,
            "buckets": [buckets[b] for b in sorted(buckets)],
        },
        sys.stdout,
    )


def one():
    serve(0)
    print("ready", flush=True)
    sys.stdin.read()


def main():
    if sys.argv[1] == "one":
        one()
    else:
        ms = int(sys.argv[4]) if len(sys.argv) > 4 else 0
        churn(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), ms)


if __name__ == "__main__":
    main()
