#!/usr/bin/env python3
"""Instruction counts of the paths that matter, against a committed baseline.

Timings on a shared machine move by 5-15 % from run to run; instruction counts under
`valgrind --tool=callgrind` do not. Each case runs a profile program (benches/examples)
twice, with n and 2n operations, and takes the difference divided by n: the cost of one
operation without the setup (opening a store, building a router, calibrating clocks).

    scripts/instructions.py            check against benches/instructions.json: fails when a
                                       case grew by more than 5 %
    scripts/instructions.py --update   write the measured counts as the new baseline (in the
                                       same commit as the change that earns it)
    scripts/instructions.py --only hot_path_inc,scrape_native   some cases only

Needs valgrind and the release build of the shmetrics-benches examples (built here).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(ROOT, "benches", "instructions.json")
TOLERANCE = 0.05
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
EXAMPLES = os.path.join(TARGET, "release", "examples")


def callgrind(args, toggle=None):
    """Instructions callgrind counts for one run of `args` (only inside functions matching
    `toggle`, if given)."""
    with tempfile.NamedTemporaryFile(prefix="callgrind.", delete=False) as out:
        path = out.name
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={path}"]
    if toggle:
        cmd.append(f"--toggle-collect={toggle}")
    run = subprocess.run(cmd + args, capture_output=True, text=True, timeout=900)
    os.unlink(path)
    m = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or not m:
        sys.exit(f"callgrind failed on {args}:\n{run.stderr[-2000:]}")
    return int(m.group(1))


def per_op(make_args, n, toggle=None):
    """Instructions of one operation: (I(2n) - I(n)) / n."""
    one = callgrind(make_args(n), toggle)
    two = callgrind(make_args(2 * n), toggle)
    return (two - one) / n


def example(name):
    return os.path.join(EXAMPLES, name)


def middleware(program, n, toggle):
    """A request through the metrics middleware minus a request through the bare app."""
    layer = per_op(lambda k: [example(program), "layer", str(k)], n, toggle)
    bare = per_op(lambda k: [example(program), "bare", str(k)], n, toggle)
    return layer - bare


def scrape_dir(kind, work):
    """A directory to scrape: native dead writers, or Python prometheus_client files."""
    path = os.path.join(work, kind)
    os.mkdir(path)
    if kind == "native":
        subprocess.run([example("gen_dir"), path, "16", "2000"], check=True)
    else:
        helper = os.path.join(ROOT, "metrics-core", "tests", "python_multiprocess.py")
        subprocess.run([sys.executable, helper, "generate", path, "200", "100"], check=True)
    return path


CASES = {
    # One pre-bound counter increment.
    "hot_path_inc": lambda work: per_op(lambda k: [example("profile_hot_path"), str(k), "0"], 200_000),
    # A labelled counter + histogram pair, as a request's middleware records them.
    "hot_path_pair": lambda work: per_op(lambda k: [example("profile_hot_path"), "0", str(k)], 20_000),
    # One observation of a histogram with native buckets.
    "hot_path_native": lambda work: per_op(lambda k: [example("profile_native"), "native", str(k)], 100_000),
    # What the tower layer adds to one request through axum.
    "axum_request": lambda work: middleware(
        "profile_axum", 1_000, "tokio::runtime::scheduler::current_thread::CoreGuard::block_on*"
    ),
    # What the actix middleware adds to one request.
    "actix_request": lambda work: middleware("profile_actix", 1_000, "*requests*"),
    # A warm scrape of 16 dead writers x 2,000 series.
    "scrape_native": lambda work: per_op(
        lambda k: [example("profile_scrape"), scrape_dir_cached("native", work), str(k)], 3
    ),
    # A warm scrape of 200 Python files x 100 entries.
    "scrape_python": lambda work: per_op(
        lambda k: [example("profile_scrape"), scrape_dir_cached("python", work), str(k)], 3
    ),
}

_dirs = {}


def scrape_dir_cached(kind, work):
    if kind not in _dirs:
        _dirs[kind] = scrape_dir(kind, work)
    return _dirs[kind]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--update", action="store_true", help="write the counts as the new baseline")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--no-build", action="store_true", help="use the examples as built")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is needed: apt-get install valgrind")
    if not args.no_build:
        subprocess.run(
            ["cargo", "build", "--release", "-q", "-p", "shmetrics-benches", "--example", "profile_hot_path",
             "--example", "profile_axum", "--example", "profile_actix", "--example", "profile_scrape",
             "--example", "profile_native", "--example", "gen_dir"],
            check=True, cwd=ROOT,
        )
    cases = args.only.split(",") if args.only else list(CASES)
    baseline = {}
    if os.path.exists(BASELINE):
        with open(BASELINE) as f:
            baseline = json.load(f)["instructions"]
    measured = {}
    failures = []
    work = tempfile.mkdtemp(prefix="instructions-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        for name in cases:
            count = CASES[name](work)
            measured[name] = round(count, 1)
            base = baseline.get(name)
            if base is None:
                print(f"{name:16} {count:14,.1f}   (no baseline)")
                if not args.update:
                    failures.append(f"{name}: no baseline (run with --update)")
                continue
            change = (count - base) / base
            verdict = "ok" if change <= TOLERANCE else f"grew more than {TOLERANCE:.0%}"
            print(f"{name:16} {count:14,.1f}   baseline {base:14,.1f}   {change:+7.2%}   {verdict}")
            if change > TOLERANCE:
                failures.append(f"{name}: {count:,.1f} instructions, {change:+.2%} over the baseline {base:,.1f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.update:
        baseline.update(measured)
        with open(BASELINE, "w") as f:
            json.dump(
                {
                    "about": "instructions per operation under valgrind --tool=callgrind "
                    "(scripts/instructions.py); update with --update in the commit that changes them",
                    "instructions": dict(sorted(baseline.items())),
                },
                f,
                indent=2,
            )
            f.write("\n")
        print(f"baseline written: {BASELINE}")
        return
    if failures:
        print("instruction counts grew:\n  " + "\n  ".join(failures))
        sys.exit(1)
    print("instruction counts within 5 % of the baseline")


if __name__ == "__main__":
    main()
