#!/usr/bin/env bash
# End-to-end run of both multi-worker examples under a real Prometheus on loopback: classic
# histograms with exemplars, and native histograms (see scripts/e2e_prometheus.py for what
# is checked); then the shmetrics exporter beside a Python gunicorn API
# (scripts/e2e_python.py). Installs Prometheus (Debian package) if
# it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v prometheus >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq prometheus >/dev/null
fi
cargo build -q -p shmetrics-examples --example axum_workers --example actix_workers
cargo build -q -p shmetrics --bin shmetrics
for example in axum_workers actix_workers; do
  # Classic histograms, every request traced: exemplars in Prometheus' exemplar storage.
  timeout 300 python3 scripts/e2e_prometheus.py --exemplars --binary "${CARGO_TARGET_DIR:-target}/debug/examples/$example"
  # Native histograms end to end: Prometheus with --enable-feature=native-histograms.
  timeout 300 python3 scripts/e2e_prometheus.py --native --binary "${CARGO_TARGET_DIR:-target}/debug/examples/$example"
done
# The shmetrics exporter beside a Python gunicorn API (prometheus_client multiprocess mode).
python3 -c 'import gunicorn' 2>/dev/null || python3 -m pip install -q gunicorn \
  || python3 -m pip install -q --user --break-system-packages gunicorn
timeout 300 python3 scripts/e2e_python.py --binary "${CARGO_TARGET_DIR:-target}/debug/shmetrics"
