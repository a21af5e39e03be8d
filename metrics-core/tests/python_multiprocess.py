"""Python's side of the prometheus_client interop tests and bench.

    worker ID           write a fixed set of metrics (every type, every gauge mode, awkward
                        label values) into $PROMETHEUS_MULTIPROC_DIR, print "ready", then
                        stay alive until stdin closes
    scenario NAME       write one of the SCENARIOS below, print "ready", stay alive until
                        stdin closes (or until killed)
    collect DIR         print MultiProcessCollector's merge of DIR, normalised (JSON)
    serve DIR           print what Python serves for DIR (MultiProcessCollector, then the
                        OpenMetrics exposition with its default escaping, read back by the
                        strict parser), normalised (JSON), `le` strings as written
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


def normalise(families, raw_le=False):
    out = {}
    for fam in families:
        samples = []
        for s in fam.samples:
            labels = dict(s.labels)
            if "le" in labels and not raw_le and fam.type == "histogram":
                labels["le"] = repr(float(labels["le"]))
            v = s.value
            if math.isnan(v):
                v = "NaN"
            elif math.isinf(v):
                v = "+Inf" if v > 0 else "-Inf"
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


SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


@scenario
def le_labels():
    from prometheus_client import Counter, Gauge, Summary

    Counter("sli_requests", "Requests under a latency objective", ["le"]).labels("0.5").inc()
    Gauge("sli_level", "Level", ["le"], multiprocess_mode="max").labels("0.5").set(3)
    Summary("sli_latency", "Latency", ["le"]).labels("1").observe(2)


@scenario
def utf8_names():
    from prometheus_client import Counter, Gauge

    Gauge("app.temp", "Temperature", ["http.method"]).labels("GET").set(7)
    Counter("app.requests", "Requests", ["http.method", "0rigin"]).labels("POST", "x").inc(2)


@scenario
def awkward_buckets():
    from prometheus_client import Histogram

    h = Histogram("awkward_seconds", "Awkward bounds", buckets=(1e-9, 1e-5, 0.1 + 0.2, 1e6, 1e20))
    for v in (1e-10, 1e-6, 0.2, 0.3, 5.0, 2e6, 1e21):
        h.observe(v)
    many = Histogram("many_buckets", "25 bounds", ["kind"], buckets=[0.001 * 2 ** i for i in range(25)])
    for i in range(40):
        many.labels("a").observe(0.0007 * 1.5 ** i)


@scenario
def deploy_old():
    from prometheus_client import Counter, Histogram

    Counter("jobs", "Jobs", ["queue"]).labels("a").inc(3)
    lat = Histogram("lat", "Latency", ["route"], buckets=(1, 5))
    lat.labels("/old").observe(1.5)
    lat.labels("/both").observe(0.5)


@scenario
def deploy_new():
    from prometheus_client import Counter, Histogram

    jobs = Counter("jobs", "Jobs", ["queue", "priority"])
    jobs.labels("a", "high").inc(5)
    lat = Histogram("lat", "Latency", ["route"], buckets=(2, 5))
    lat.labels("/new").observe(1.5)
    lat.labels("/both").observe(1.5)


@scenario
def mixed():
    from prometheus_client import Counter, Histogram

    Counter("mixed_jobs", "Jobs", ["queue"]).labels("a").inc(2)
    lat = Histogram("mixed_lat", "Latency", ["route"], buckets=(1, 5))
    lat.labels("/py").observe(1.5)
    lat.labels("/both").observe(0.5)


@scenario
def misc():
    from prometheus_client import Counter, Gauge, Histogram

    Counter("app:requests:rate", "Colons", ["code"]).labels("200").inc(4)
    Counter("payload", "Bytes", namespace="ns", subsystem="sub", unit="bytes").inc(10)
    Counter("with_total", "Declared with the suffix").inc(2)
    Counter("without", "Declared without it").inc(3)
    extremes = Gauge("extremes", "Extreme values", ["which"], multiprocess_mode="max")
    for which, v in [("tiny", 5e-324), ("huge", 1.7976931348623157e308), ("inf", float("inf")),
                     ("-inf", float("-inf")), ("nan", float("nan")), ("neg", -2.5)]:
        extremes.labels(which).set(v)
    per_pid = Gauge("per_pid", "All mode, odd values", ["which"])
    per_pid.labels("inf").set(float("inf"))
    per_pid.labels("nan").set(float("nan"))
    Histogram("sizes_bytes", "Sizes", buckets=(1, 10, 100)).observe(1e308)


@scenario
def inprogress():
    from prometheus_client import Gauge

    g = Gauge("in_progress", "In progress", multiprocess_mode="livesum")
    g_all = Gauge("in_progress_all", "In progress")
    with g.track_inprogress(), g_all.track_inprogress():
        print("ready", os.getpid(), flush=True)
        time.sleep(3600)


@scenario
def forked():
    from prometheus_client import Counter, Gauge

    c = Counter("forked_jobs", "Jobs", ["who"])
    g = Gauge("forked_level", "Level", multiprocess_mode="sum")
    c.labels("parent").inc(1)
    g.set(1)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        c.labels("child").inc(10)
        c.labels("parent").inc(100)
        g.set(5)
        os.write(w, b"x")
        sys.stdin.read()
        os._exit(0)
    os.read(r, 1)  # the child has written
    c.labels("parent").inc(1000)


def run_scenario(name):
    SCENARIOS[name]()
    print("ready", os.getpid(), flush=True)
    sys.stdin.read()


def serve(path):
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.openmetrics.exposition import generate_latest
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=path)
    text = generate_latest(registry).decode("utf-8")
    return normalise(text_string_to_metric_families(text), raw_le=True)


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
    elif cmd == "serve":
        json.dump(serve(sys.argv[2]), sys.stdout)
    elif cmd == "scenario":
        run_scenario(sys.argv[2])
    elif cmd == "parse":
        from prometheus_client.openmetrics.parser import text_string_to_metric_families

        with open(sys.argv[2], encoding="utf-8") as f:
            raw = len(sys.argv) > 3 and sys.argv[3] == "raw-le"
            json.dump(normalise(text_string_to_metric_families(f.read()), raw_le=raw), sys.stdout)
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
