"""Python's side of the prometheus_client interop tests and bench.

    worker ID           write a fixed set of metrics (every type, every gauge mode, awkward
                        label values) into $PROMETHEUS_MULTIPROC_DIR, print "ready", then
                        stay alive until stdin closes
    collect DIR         print MultiProcessCollector's merge of DIR, normalised (JSON)
    parse FILE          parse an OpenMetrics exposition with the strict parser, print it
                        normalised (JSON)
    mark-dead DIR PID   what a supervisor's child_exit hook does: mark_process_dead
    generate DIR FILES SERIES
                        write FILES files of SERIES entries each, as FILES / 4 workers
                        would (counter, gauge_all, gauge_livesum and histogram files)
    time DIR ITERS      seconds for ITERS scrapes of DIR (collect + exposition), one per line

Normalised form: {family: {"type", "help", "samples": [[name, {labels}, value]]}}.
"""

import json
import math
import os
import sys
import time


def normalise(families):
    out = {}
    for fam in families:
        samples = []
        for s in fam.samples:
            labels = dict(s.labels)
            if "le" in labels:
                labels["le"] = repr(float(labels["le"]))
            v = s.value
            v = "NaN" if math.isnan(v) else v
            samples.append([s.name, labels, v])
        samples.sort(key=lambda s: json.dumps(s[:2], sort_keys=True))
        out[fam.name] = {"type": fam.type, "help": fam.documentation, "samples": samples}
    return out


AWKWARD = ['plain', 'with "quotes"', "back\\slash", "new\nline", "ünïcödé ✓", "emoji 🦀", "", "a,b=c}{"]


def worker(wid):
    from prometheus_client import Counter, Gauge, Histogram, Summary

    requests = Counter("requests", "Requests.\nSecond line with a \\ backslash", ["method", "path"])
    for i, value in enumerate(AWKWARD):
        requests.labels("GET", value).inc(wid + 1 + i)
    requests.labels("POST", "/orders").inc(0.5 * (wid + 1))
    jobs = Counter("jobs_total", "Jobs done")
    jobs.inc(10 * (wid + 1))
    for mode in sorted(Gauge._MULTIPROC_MODES):
        g = Gauge("g_" + mode, "Gauge in mode " + mode, ["kind"], multiprocess_mode=mode)
        for k, kind in enumerate(["a", "b", AWKWARD[1]]):
            # Distinct per worker and kind; worker 1 holds the minimum of kind "a".
            value = (10 * (wid + 1) + k) * (-1 if (wid, k) == (1, 0) else 1)
            g.labels(kind).set(value)
            time.sleep(0.002)  # mostrecent: later workers win, with distinct timestamps
    nolabel = Gauge("in_flight", "Requests in flight", multiprocess_mode="livesum")
    nolabel.inc(wid + 2)
    latency = Histogram("latency_seconds", "Latency", ["route"])
    for i in range(20):
        latency.labels("/users/{id}").observe(0.001 * (i + 1) * (wid + 1))
        latency.labels(AWKWARD[3]).observe(i * (wid + 1))
    sizes = Histogram("size_bytes", "Sizes", buckets=[100, 1000, 1e4, float("inf")])
    for v in [50, 500, 5000, 50000][: wid + 2]:
        sizes.observe(v)
    payload = Summary("payload_bytes", "Payload sizes", ["kind"])
    for i in range(5):
        payload.labels(AWKWARD[4]).observe(100 * i + wid)
    Summary("idle_seconds", "Never observed")  # a summary with zeros
    print("ready", os.getpid(), flush=True)
    sys.stdin.read()


def collect(path):
    from prometheus_client.multiprocess import MultiProcessCollector

    return MultiProcessCollector(None, path=path).collect()


def generate(path, files, series):
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    workers = max(1, files // 4)
    labels = ["method", "route", "status"]
    buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, "+Inf"]
    for pid in range(1000, 1000 + workers):
        ts = time.time()
        for prefix in ["counter", "gauge_all", "gauge_livesum", "histogram"]:
            d = MmapedDict(os.path.join(path, f"{prefix}_{pid}.db"))
            if prefix == "histogram":
                for s in range(series // (len(buckets) + 1)):
                    values = ["GET", f"/route/{s}", "200"]
                    d.write_value(mmap_key("latency_seconds", "latency_seconds_sum", labels, values, "Latency"), s * 0.1, 0.0)
                    for b in buckets:
                        key = mmap_key("latency_seconds", "latency_seconds_bucket", labels + ["le"], values + [str(b)], "Latency")
                        d.write_value(key, float(s % 7), 0.0)
            else:
                name = {"counter": "requests", "gauge_all": "temperature", "gauge_livesum": "in_flight"}[prefix]
                sample = name + "_total" if prefix == "counter" else name
                for s in range(series):
                    key = mmap_key(name, sample, labels, ["GET", f"/route/{s}", "200"], name.capitalize())
                    d.write_value(key, float(s + pid), ts)
            d.close()


def main():
    cmd = sys.argv[1]
    if cmd == "worker":
        worker(int(sys.argv[2]))
    elif cmd == "collect":
        json.dump(normalise(collect(sys.argv[2])), sys.stdout)
    elif cmd == "parse":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families

        with open(sys.argv[2], encoding="utf-8") as f:
            json.dump(normalise(text_string_to_metric_families(f.read())), sys.stdout)
    elif cmd == "mark-dead":
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(int(sys.argv[3]), sys.argv[2])
    elif cmd == "generate":
        generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "time":
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        for _ in range(int(sys.argv[3])):
            start = time.perf_counter()
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=sys.argv[2])
            generate_latest(registry)
            print(time.perf_counter() - start, flush=True)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
