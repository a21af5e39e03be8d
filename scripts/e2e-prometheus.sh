#!/usr/bin/env bash
# End-to-end run of both multi-worker examples under a real Prometheus on loopback: classic
# histograms with exemplars, and native histograms (see scripts/e2e_prometheus.py for what
# is checked); then every dashboard and alert expression against real data, node-exporter's
# too (scripts/e2e_dashboards.py); then alerts through Alertmanager to a webhook
# (scripts/e2e_alerts.py); then five APIs on four hosts under one Prometheus
# (scripts/e2e_fleet.py); then two hosts' agents feeding one VictoriaMetrics
# (scripts/e2e_central.py); then the shmetrics exporter beside a Python gunicorn API
# (scripts/e2e_python.py). Installs Prometheus, Alertmanager, node-exporter and
# VictoriaMetrics (Debian packages) if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
command -v victoria-metrics >/dev/null || need+=(victoria-metrics)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build -q -p shmetrics-examples --example axum_workers --example actix_workers
cargo build -q -p shmetrics --bin shmetrics
for example in axum_workers actix_workers; do
  # Classic histograms, every request traced: exemplars in Prometheus' exemplar storage.
  timeout 300 python3 scripts/e2e_prometheus.py --exemplars --binary "${CARGO_TARGET_DIR:-target}/debug/examples/$example"
  # Native histograms end to end: Prometheus with --enable-feature=native-histograms.
  timeout 300 python3 scripts/e2e_prometheus.py --native --binary "${CARGO_TARGET_DIR:-target}/debug/examples/$example"
done
# Dashboards that return data: every dashboard and alert expression, with node-exporter.
timeout 300 python3 scripts/e2e_dashboards.py --binary "${CARGO_TARGET_DIR:-target}/debug/examples/axum_workers"
# Alerts delivered: the shipped rules (every for: at 0s in a test copy) through Alertmanager
# to a webhook, each condition reached and left again.
timeout 300 python3 scripts/e2e_alerts.py --binary "${CARGO_TARGET_DIR:-target}/debug/examples/axum_workers"
# The source documents' layout: five APIs on each of four hosts (loopback addresses), one
# Prometheus job per API with one target per host, the shipped prometheus.yml.
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install -q pyyaml \
  || python3 -m pip install -q --user --break-system-packages pyyaml
timeout 300 python3 scripts/e2e_fleet.py --binary "${CARGO_TARGET_DIR:-target}/debug/examples/axum_workers"
# One central store: two hosts' agents (Prometheus agent mode, vmagent) writing to one
# VictoriaMetrics, through its outages and the agents' restarts.
timeout 300 python3 scripts/e2e_central.py --binary "${CARGO_TARGET_DIR:-target}/debug/examples/axum_workers"
# The shmetrics exporter beside a Python gunicorn API (prometheus_client multiprocess mode).
python3 -c 'import gunicorn' 2>/dev/null || python3 -m pip install -q gunicorn \
  || python3 -m pip install -q --user --break-system-packages gunicorn
timeout 300 python3 scripts/e2e_python.py --binary "${CARGO_TARGET_DIR:-target}/debug/shmetrics"
