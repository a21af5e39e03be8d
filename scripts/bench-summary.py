#!/usr/bin/env python3
"""Prints the medians criterion saved (target/criterion/<group>/<bench>/new/estimates.json),
optionally only for groups matching a prefix: scripts/bench-summary.py [prefix]."""
import glob, json, os, sys

prefix = sys.argv[1] if len(sys.argv) > 1 else ""
root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "target", "criterion")
rows = []
for f in sorted(glob.glob(os.path.join(root, "**", "new", "estimates.json"), recursive=True)):
    name = os.path.relpath(os.path.dirname(os.path.dirname(f)), root)
    if name.startswith(prefix):
        ns = json.load(open(f))["median"]["point_estimate"]
        rows.append((name, ns))
for name, ns in rows:
    unit = (ns, "ns") if ns < 1e4 else (ns / 1e3, "µs") if ns < 1e7 else (ns / 1e6, "ms")
    print(f"{name:<60} {unit[0]:10.2f} {unit[1]}")
