#!/usr/bin/env bash
# Checks every deployment and monitoring file under examples/:
#   * promtool check config on each Prometheus configuration (in a scratch copy, with
#     placeholder token files where the configuration points at secrets/);
#   * promtool check rules and promtool test rules on the alert rules;
#   * docker-compose.yml through `docker compose config` (or docker-compose v1), which
#     parses and validates it without a Docker engine;
#   * the Grafana dashboard and provisioning files, and the Kubernetes manifests, parse.
# Installs promtool (Debian package prometheus) and docker-compose if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing $*: install it (apt-get install $*) or run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
}
command -v promtool >/dev/null || install prometheus
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  install docker-compose
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

check_prometheus_config() { # config [promtool flags...]
  local config=$1 dir copy
  shift
  dir=$(dirname "$config")
  copy="$scratch/$(echo "$dir" | tr / _)"
  mkdir -p "$copy"
  cp -L "$dir"/*.yml "$copy"/
  # Placeholder tokens for every credentials_file the configuration names.
  grep -oE 'credentials_file: *[^ ]+' "$config" | awk '{print $2}' | while read -r f; do
    mkdir -p "$copy/$(dirname "$f")"
    echo placeholder >"$copy/$f"
  done
  echo "== promtool check config $config"
  promtool check config "$@" "$copy/$(basename "$config")"
}

for c in examples/stack/prometheus/prometheus.yml \
         examples/deploy/prometheus/prometheus.yml \
         examples/deploy/prometheus/hosted.yml \
         examples/deploy/prometheus/python-exporter.yml; do
  check_prometheus_config "$c"
done
check_prometheus_config examples/deploy/prometheus/agent.yml --agent

echo "== promtool check rules / test rules"
promtool check rules examples/stack/prometheus/alerts.yml
(cd examples/stack/prometheus && promtool test rules alerts_test.yml)

echo "== docker-compose.yml"
if docker compose version >/dev/null 2>&1; then
  (cd examples/stack && docker compose config -q)
else
  (cd examples/stack && docker-compose config -q)
fi
echo "docker-compose.yml is valid"

echo "== Grafana, Kubernetes and systemd files"
python3 - <<'PY'
import json, re, sys, yaml
d = json.load(open("examples/stack/grafana/provisioning/dashboards/shmetrics.json"))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
assert d["uid"] == "shmetrics" and len(exprs) >= 15, "dashboard"
for f in ("datasources/datasources.yml", "dashboards/dashboards.yml"):
    yaml.safe_load(open("examples/stack/grafana/provisioning/" + f))
docs = list(yaml.safe_load_all(open("examples/deploy/kubernetes/servicemonitor.yaml")))
kinds = sorted(x["kind"] for x in docs)
assert kinds == ["Deployment", "Service", "ServiceMonitor"], kinds
sm = next(x for x in docs if x["kind"] == "ServiceMonitor")
assert sm["spec"]["endpoints"][0]["authorization"]["credentials"]["name"] == "metrics-token"
exporter = open("examples/deploy/systemd/shmetrics-exporter.service").read()
for key in ("[Service]", "ExecStart=/usr/local/bin/shmetrics serve", "$SHMETRICS_ARGS", "--python-liveness proc", "ReadOnlyPaths=/dev/shm/prometheus"):
    assert key in exporter, key
unit = open("examples/deploy/systemd/shmetrics-api@.service").read()
for key in ("[Service]", "PROMETHEUS_MULTIPROC_DIR=/dev/shm/prometheus/%i", "SHMETRICS_APPLICATION=%i", "ExecStart="):
    assert key in unit, key
tmp = open("examples/deploy/tmpfiles.d/shmetrics.conf").read()
assert "777" not in tmp and len(re.findall(r"^d\s+/dev/shm/prometheus/\w+\s+0750", tmp, re.M)) == 5
print(f"dashboard: {len(d['panels'])} panels, {len(exprs)} queries; kubernetes: {', '.join(kinds)}; systemd and tmpfiles.d: ok")
PY
echo "all configuration files check out"
