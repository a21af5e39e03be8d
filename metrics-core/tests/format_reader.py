#!/usr/bin/env python3
"""A reader of shmetrics store directories, written from FORMAT.md alone.

Usage: format_reader.py DIR  -> prints the merged families as JSON:
  {"<family>": {"type": ..., "mode": ..., "labels": [...], "series": [[[values...], value], ...]}}
with histogram values as {"buckets": [...], "sum": x}, and for histograms with native
buckets also "native": {"schema": s, "zero": n, "positive": [[index, count]...],
"negative": [...]}. Series with exemplars get a third element: [[bucket, {labels}, value,
time_ns], ...]. Used by the Rust test suite to check
that the specification is precise enough to be implemented independently.
"""
import fcntl
import json
import os
import struct
import sys

MAGIC = b"SHMETRIC"
TYPES = {1: "counter", 2: "counter_f64", 3: "gauge", 4: "histogram"}
MODES = ["all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum",
         "mostrecent", "livemostrecent"]


class Bad(Exception):
    pass


def u64(b, off):
    return struct.unpack_from("<Q", b, off)[0]


def f64(b, off):
    return struct.unpack_from("<d", b, off)[0]


def halves(w):
    return w & 0xFFFFFFFF, w >> 32


def read_string(b, off, end):
    if off + 8 > end:
        raise Bad("string header out of record")
    n = u64(b, off)
    words = (n + 7) // 8
    if off + 8 + words * 8 > end:
        raise Bad("string out of record")
    raw = b[off + 8: off + 8 + words * 8]
    if any(raw[n:]):
        raise Bad("padding")
    return raw[:n].decode("utf-8"), off + 8 + words * 8


def is_live(path):
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def read_file(path):
    with open(path, "rb") as f:
        b = f.read()
    if len(b) < 128 or b[:8] != MAGIC:
        raise Bad("header")
    version, hsize = halves(u64(b, 8))
    if version not in (1, 2) or hsize != 128:
        raise Bad("version")
    used = u64(b, 16)
    if used < 128 or used > len(b) or used % 8:
        raise Bad("used")
    pid, flags = halves(u64(b, 24))
    if flags & ~1:
        raise Bad("flags")
    info = {"pid": pid, "start": u64(b, 32), "writer": u64(b, 40), "accumulator": bool(flags & 1),
            "errors": [u64(b, 56), u64(b, 64), u64(b, 72)],
            "families": [], "series": [], "blocks": [], "folded": [], "removals": [], "chunks": [],
            "exemplars": []}

    def in_block(off, nslots):
        return off % 8 == 0 and any(s <= off and off + nslots * 8 <= e for s, e in info["blocks"])

    pos = 128
    while pos < used:
        kind, length = halves(u64(b, pos))
        if length < 8 or length % 8 or pos + length > used:
            raise Bad("record length")
        end = pos + length
        if kind == 1:
            info["application"], _ = read_string(b, pos + 8, end)
        elif kind == 2:
            fid, flags = halves(u64(b, pos + 8))
            nlabels, nbuckets = halves(u64(b, pos + 16))
            stats = u64(b, pos + 24)
            name, o = read_string(b, pos + 32, end)
            help_, o = read_string(b, o, end)
            labels = []
            for _ in range(nlabels):
                l, o = read_string(b, o, end)
                labels.append(l)
            buckets = [f64(b, o + 8 * i) for i in range(nbuckets)]
            o += 8 * nbuckets
            if fid != len(info["families"]) or not in_block(stats, 1):
                raise Bad("family")
            if flags >> 17:
                raise Bad("family flags")
            ty = TYPES[flags & 0xFF]
            mode = MODES[(flags >> 8) & 0xFF]
            native = None
            if flags & (1 << 16):
                schema, limit = halves(u64(b, o))
                schema = schema - (1 << 32) if schema >= 1 << 31 else schema
                if ty != "histogram" or not -4 <= schema <= 8:
                    raise Bad("native")
                native = {"schema": schema, "limit": limit, "zero_threshold": f64(b, o + 8)}
            nslots = {"counter": 1, "counter_f64": 1, "histogram": nbuckets + 1 + (native is not None)}.get(
                ty, 3 if mode.endswith("mostrecent") else 1)
            info["families"].append({"name": name, "help": help_, "type": ty, "mode": mode,
                                     "labels": labels, "buckets": buckets, "native": native,
                                     "stats": u64(b, stats), "nslots": nslots})
        elif kind == 3:
            fid, nvalues = halves(u64(b, pos + 8))
            voff = u64(b, pos + 16)
            fam = info["families"][fid]
            per_process = fam["type"] == "gauge" and fam["mode"] in ("all", "liveall")
            want = len(fam["labels"]) + (1 if info["accumulator"] and per_process else 0)
            if nvalues != want or not in_block(voff, fam["nslots"]):
                raise Bad("series")
            o = pos + 24
            values = []
            for _ in range(nvalues):
                v, o = read_string(b, o, end)
                values.append(v)
            info["series"].append((fid, voff, values))
        elif kind == 4:
            info["blocks"].append((pos + 8, end))
        elif kind == 7:
            if length != 80:
                raise Bad("chunk length")
            voff, high = halves(u64(b, pos + 8))
            if high >> 25:
                raise Bad("chunk bits")
            chunk = (high & 0xFFFF) - (1 << 16 if high & 0x8000 else 0)
            schema = ((high >> 16) & 0xFF) - (1 << 8 if high & 0x800000 else 0)
            negative = bool(high >> 24 & 1)
            owner = [s_ for s_ in info["series"] if s_[1] == voff]
            if not owner or info["families"][owner[0][0]]["native"] is None or not -4 <= schema <= 8:
                raise Bad("chunk")
            for j in range(16):
                word = u64(b, pos + 16 + 8 * (j // 2))
                count = (word >> (32 * (j % 2))) & 0xFFFFFFFF
                if count:
                    info["chunks"].append((voff, (negative, schema, 16 * chunk + j), count))
        elif kind == 5:
            if not info["accumulator"]:
                raise Bad("folded outside accumulator")
            n = u64(b, pos + 8)
            info["folded"].extend(u64(b, pos + 16 + 8 * i) for i in range(n))
        elif kind == 6:
            time = u64(b, pos + 8)
            flags, k = halves(u64(b, pos + 16))
            n = u64(b, pos + 24)
            family, o = read_string(b, pos + 32, end)
            labels = []
            for _ in range(k):
                v, o = read_string(b, o, end)
                labels.append(v)
            baselines = {}
            for _ in range(n):
                writer = u64(b, o)
                m = u64(b, o + 8)
                o += 16
                key = []
                for _ in range(m):
                    v, o = read_string(b, o, end)
                    key.append(v)
                s_ = u64(b, o)
                values = [u64(b, o + 8 + 8 * i) for i in range(s_)]
                o += 8 + 8 * s_
                baselines[(writer, tuple(key))] = values
            info["removals"].append({"time": time, "family": family,
                                     "labels": None if flags & 1 else tuple(labels),
                                     "baselines": baselines})
        elif kind == 8:
            voff, bucket = halves(u64(b, pos + 8))
            owner = [s_ for s_ in info["series"] if s_[1] == voff]
            if not owner or length < 48:
                raise Bad("exemplar")
            seq, value, time_ = u64(b, pos + 16), f64(b, pos + 24), u64(b, pos + 32)
            nbytes, pairs = halves(u64(b, pos + 40))
            data = b[pos + 48: end]
            if seq % 2 == 0 and time_ and nbytes <= len(data):
                labels, o, ok = {}, 0, True
                for _ in range(pairs):
                    try:
                        parts = []
                        for _ in range(2):
                            n = struct.unpack_from("<H", data, o)[0]
                            parts.append(data[o + 2: o + 2 + n].decode("utf-8"))
                            o += 2 + n
                        labels[parts[0]] = parts[1]
                    except (struct.error, UnicodeDecodeError):
                        ok = False
                if ok and o <= nbytes:
                    info["exemplars"].append((voff, bucket, labels, value, time_))
        elif not kind & (1 << 31):
            raise Bad("kind")
        pos = end
    info["bytes"] = b
    return info


def merge(directory):
    files = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not name.endswith(".shm") or name.startswith(".tmp-") or os.path.islink(path):
            continue
        try:
            info = read_file(path)
        except (Bad, KeyError, IndexError, UnicodeDecodeError, struct.error):
            continue
        if info["accumulator"] and name != "accumulator.shm":
            continue
        info["live"] = False if info["accumulator"] else is_live(path)
        files.append(info)
    folded = {w for f in files if f["accumulator"] for w in f["folded"]}
    files = [f for f in files if f["accumulator"] or f["writer"] not in folded]
    files.sort(key=lambda f: (not f["live"], -f["start"]))
    pid_count = {}
    for f in files:
        if not f["accumulator"]:
            pid_count[f["pid"]] = pid_count.get(f["pid"], 0) + 1

    ref = {}
    for f in files:
        for fam in f["families"]:
            ref.setdefault(fam["name"], fam)

    removals = {}
    for f in files:
        for r in f["removals"]:
            removals.setdefault(r["family"], []).append(r)
    for lst in removals.values():
        lst.sort(key=lambda r: -r["time"])

    def removal_for(family, labels):
        for r in removals.get(family, []):
            if r["labels"] is None or r["labels"] == labels:
                return r
        return None

    out = {}
    for name, r in ref.items():
        labels = list(r["labels"]) + (["pid"] if r["type"] == "gauge" and r["mode"] in ("all", "liveall") else [])
        out[name] = {"type": r["type"], "mode": r["mode"], "labels": labels, "series": {}, "covered": set(),
                     "exemplars": {}}

    folded_pids = set()
    for f in files:
        if f["accumulator"]:
            for fid, _voff, values in f["series"]:
                fam = f["families"][fid]
                if fam["type"] == "gauge" and fam["mode"] in ("all", "liveall"):
                    folded_pids.add(values[-1])
    for f in files:
        b = f["bytes"]
        if pid_count.get(f["pid"], 0) > 1 or str(f["pid"]) in folded_pids:
            pid_label = "%d-%08x" % (f["pid"], f["writer"] >> 32)
        else:
            pid_label = str(f["pid"])
        for fid, voff, values in f["series"]:
            fam = f["families"][fid]
            r = ref[fam["name"]]
            if (fam["type"], fam["mode"], fam["labels"], fam["buckets"]) != (r["type"], r["mode"], r["labels"], r["buckets"]):
                continue
            o = out[fam["name"]]
            series = o["series"]
            ty, mode = fam["type"], fam["mode"]
            if ty == "gauge" and mode.startswith("live") and not f["live"]:
                continue
            per_process = ty == "gauge" and mode in ("all", "liveall")
            key = tuple(values) + ((pid_label,) if per_process and not f["accumulator"] else ())
            rem = removal_for(fam["name"], key[:len(fam["labels"])])
            base = None
            if rem is not None:
                o["covered"].add(key)
                base = rem["baselines"].get((f["writer"], key), [])
            def bw(i):
                return base[i] if base and i < len(base) else 0
            def bf(i):
                return struct.unpack("<d", struct.pack("<Q", bw(i)))[0]
            removed_at = rem["time"] if rem is not None else 0
            for voff2, bucket, labels, value, time_ in f["exemplars"]:
                if voff2 == voff and time_ > removed_at:
                    best = o["exemplars"].setdefault(key, {})
                    if bucket not in best or time_ > best[bucket][3]:
                        best[bucket] = [bucket, labels, value, time_]
            if ty == "counter":
                series[key] = series.get(key, 0) + max(u64(b, voff) - bw(0), 0)
            elif ty == "counter_f64":
                series[key] = series.get(key, 0.0) + max(f64(b, voff) - bf(0), 0.0)
            elif ty == "histogram":
                n = len(fam["buckets"])
                cur = series.setdefault(key, {"buckets": [0] * n, "sum": 0.0})
                for i in range(n):
                    cur["buckets"][i] += max(u64(b, voff + 8 * i) - bw(i), 0)
                cur["sum"] += f64(b, voff + 8 * n) - bf(n)
                if fam["native"] is not None:
                    nat = cur.setdefault("native", {"zero": 0, "buckets": {}})
                    nat["zero"] += max(u64(b, voff + 8 * (n + 1)) - bw(n + 1), 0)
                    # Baseline pairs after the slots: (bucket word, count).
                    before = {}
                    for i in range(n + 2, len(base or []) - 1, 2):
                        w = base[i]
                        idx = w & 0xFFFFFFFF
                        idx = idx - (1 << 32) if idx >= 1 << 31 else idx
                        sch = (w >> 32) & 0xFF
                        sch = sch - 256 if sch >= 128 else sch
                        before[(bool(w >> 40 & 1), sch, idx)] = base[i + 1]
                    counts = {}
                    for voff2, bucket, count in f["chunks"]:
                        if voff2 == voff:
                            counts[bucket] = counts.get(bucket, 0) + count
                    for bucket, count in counts.items():
                        c = max(count - before.get(bucket, 0), 0)
                        if c:
                            nat["buckets"][bucket] = nat["buckets"].get(bucket, 0) + c
            elif mode.endswith("mostrecent"):
                v, t = f64(b, voff + 8), u64(b, voff + 16)
                if base and len(base) > 2 and base[2] == t:
                    continue
                cur = series.get(key, (0.0, 0))
                if t > cur[1]:
                    cur = (v, t)
                series[key] = cur
            else:
                if base and base[0] == u64(b, voff):
                    continue
                v = f64(b, voff)
                if key not in series:
                    series[key] = v
                elif mode in ("min", "livemin"):
                    series[key] = min(series[key], v)
                elif mode in ("max", "livemax"):
                    series[key] = max(series[key], v)
                elif mode in ("sum", "livesum"):
                    series[key] += v
    for name, fam in out.items():
        items = []
        for key, v in sorted(fam["series"].items()):
            if key in fam["covered"]:
                if fam["type"] in ("counter", "counter_f64") and v == 0:
                    continue
                if fam["type"] == "histogram" and sum(v["buckets"]) == 0 and (
                        "native" not in v or (v["native"]["zero"] == 0 and not v["native"]["buckets"])):
                    continue
            if fam["type"] == "histogram" and "native" in v:
                v["native"] = native_view(v["native"], ref[name]["native"])
            if key in fam["exemplars"]:
                items.append([list(key), v, [e for _, e in sorted(fam["exemplars"][key].items())]])
                continue
            if fam["mode"].endswith("mostrecent") and fam["type"] == "gauge":
                v = v[0]
            items.append([list(key), v])
        fam["series"] = items
        del fam["covered"]
        del fam["exemplars"]
    return out


def native_view(nat, spec):
    """One series' native buckets as shown: every bucket at the coarsest schema, then the
    resolution halved while more buckets than the limit remain (down to schema -4)."""
    schema = min([spec["schema"]] + [s_ for (_, s_, _) in nat["buckets"]])

    def at(target):
        out = {}
        for (neg, s_, i), c in nat["buckets"].items():
            j = ((i - 1) >> (s_ - target)) + 1
            out[(neg, j)] = out.get((neg, j), 0) + c
        return out

    shown = at(schema)
    while spec["limit"] and len(shown) > spec["limit"] and schema > -4:
        schema -= 1
        shown = at(schema)
    return {"schema": schema, "zero": nat["zero"],
            "positive": sorted([i, c] for (neg, i), c in shown.items() if not neg),
            "negative": sorted([i, c] for (neg, i), c in shown.items() if neg)}


if __name__ == "__main__":
    json.dump(merge(sys.argv[1]), sys.stdout, sort_keys=True)
