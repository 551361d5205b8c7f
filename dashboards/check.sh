#!/usr/bin/env bash
# Offline checks of everything under dashboards/:
#   1. promtool check config  dashboards/prometheus/prometheus.yml
#      and dashboards/prometheus/host.yml (the reference host)
#   2. promtool check rules   dashboards/prometheus/rules/*.yml
#   3. promtool test rules    dashboards/prometheus/tests/*.yml
#   4. npm ci in tests/grafana-schema, then node validate.mjs: every
#      dashboards/*.json against Grafana's own Dashboard type
#      (@grafana/schema -> JSON Schema -> ajv), negative controls, lint;
#   5. promtool check rules on every dashboard query (variables
#      substituted), so Prometheus's parser checks the PromQL.
# Runs every step, then exits non-zero if any failed.
#
# Needs prometheus/promtool (apt-get install -y --no-install-recommends
# prometheus), node >= 20 and npm; npm ci installs the locked packages.
#
# The live check (a real Prometheus scraping the demo over memory -> disk
# -> Redis, every dashboard query and recording rule must have data) is the
# Rust test tests/it/prometheus.rs, run by scripts/test.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo" || exit 1

for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

passed=0
failed=0
step() {
  echo "==> $*"
  if "$@"; then
    passed=$((passed + 1))
  else
    echo "FAILED: $*" >&2
    failed=$((failed + 1))
  fi
}
missing() {
  echo "FAILED: $1" >&2
  failed=$((failed + 1))
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if command -v promtool >/dev/null 2>&1; then
  step promtool check config dashboards/prometheus/prometheus.yml
  step promtool check config dashboards/prometheus/host.yml
  step promtool check rules dashboards/prometheus/rules/*.yml
  step promtool test rules dashboards/prometheus/tests/*.yml
else
  missing "promtool not found (apt-get install -y --no-install-recommends prometheus)"
fi

if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
  if step bash -c 'cd tests/grafana-schema && npm ci --no-audit --no-fund'; then
    step bash -c "cd tests/grafana-schema && node validate.mjs --emit-promtool-rules '$tmp/dashboard-queries.yml'"
    if [ -s "$tmp/dashboard-queries.yml" ] && command -v promtool >/dev/null 2>&1; then
      step promtool check rules "$tmp/dashboard-queries.yml"
    fi
  fi
else
  missing "node and npm are needed for the Grafana schema check"
fi

echo
echo "dashboards: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
