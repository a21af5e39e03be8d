#!/usr/bin/env python3
"""Checks the minimum supported Rust version (the workspace's `rust-version`) as far as this
machine allows without that toolchain: every crate the published crates depend on (normal
and build dependencies, all features) declares a `rust-version` no newer than ours, or none.
The crates' own code is held to it by clippy's `incompatible_msrv` lint (on by default),
which reads the same `rust-version`. With the MSRV toolchain installed, `cargo +<version>
check` on the published crates is run as well."""
import json
import shutil
import subprocess
import sys

PUBLISHED = ["shmetrics-core", "shmetrics-tower", "shmetrics-actix"]


def version(v):
    return tuple(int(x) for x in v.split(".")[:3]) + (0,) * (3 - len(v.split(".")))


meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--all-features"]))
pkgs = {p["id"]: p for p in meta["packages"]}
ours = {p["name"]: p for p in pkgs.values() if p["name"] in PUBLISHED}
msrv = ours["shmetrics-core"]["rust_version"]
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
seen, todo = set(), [p["id"] for p in ours.values()]
while todo:
    i = todo.pop()
    if i in seen:
        continue
    seen.add(i)
    for d in nodes[i]["deps"]:
        if any(k["kind"] in (None, "build") for k in d["dep_kinds"]):
            todo.append(d["pkg"])
bad = []
for i in sorted(seen, key=lambda i: pkgs[i]["name"]):
    p = pkgs[i]
    rv = p.get("rust_version")
    if rv and version(rv) > version(msrv):
        bad.append(f"{p['name']} {p['version']} needs Rust {rv}")
for name, p in ours.items():
    if p.get("rust_version") != msrv:
        bad.append(f"{name} declares rust-version {p.get('rust_version')}, the workspace {msrv}")
if bad:
    print(f"MSRV {msrv} broken:\n  " + "\n  ".join(bad))
    sys.exit(1)
print(f"MSRV {msrv}: {len(seen) - len(ours)} dependencies of the published crates accept it")
toolchains = subprocess.run(["rustup", "toolchain", "list"], capture_output=True, text=True).stdout
if shutil.which("rustup") and any(l.startswith(msrv) for l in toolchains.splitlines()):
    args = ["cargo", f"+{msrv}", "check", "--all-features"] + sum((["-p", n] for n in PUBLISHED), [])
    subprocess.run(args, check=True)
    print(f"built with Rust {msrv}")
else:
    print(f"no Rust {msrv} toolchain installed here: not built with it")
