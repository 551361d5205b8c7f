#!/usr/bin/env bash
# Offline checks of everything under dashboards/:
#   1. promtool check config  dashboards/prometheus/prometheus.yml
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
# Optional live check (not run by default: it takes about 30 s):
#   dashboards/check.sh --live
# runs `tierscope demo` ($TIERSCOPE_BIN, else target/release/tierscope, else
# target/debug/tierscope) with Prometheus loading this directory's config
# and rules, then evaluates every dashboard query and recording rule and
# fails on an empty result. With TIERSCOPE_REDIS_URL (and
# TIERSCOPE_REDIS_KEY) set, the demo gets --redis and the Remote tier row
# is evaluated too. It does not build anything.
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo" || exit 1

live=0
for arg in "$@"; do
  case "$arg" in
    --live) live=1 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
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
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT

if command -v promtool >/dev/null 2>&1; then
  step promtool check config dashboards/prometheus/prometheus.yml
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

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

live_check() {
  local bin="${TIERSCOPE_BIN:-}"
  if [ -z "$bin" ]; then
    for b in target/release/tierscope target/debug/tierscope; do
      if [ -x "$b" ]; then bin="$b"; break; fi
    done
  fi
  if [ -z "$bin" ] || [ ! -x "$bin" ]; then
    echo "no tierscope binary (set TIERSCOPE_BIN or build with --features cli)" >&2
    return 1
  fi
  local demo_port prom_port
  demo_port="$(free_port)" && prom_port="$(free_port)" || return 1
  sed -e "s#127.0.0.1:9464#127.0.0.1:${demo_port}#" \
      -e "s#- rules/#- ${repo}/dashboards/prometheus/rules/#" \
      dashboards/prometheus/prometheus.yml > "$tmp/prometheus.yml"
  prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/tsdb" \
    --web.listen-address="127.0.0.1:${prom_port}" > "$tmp/prometheus.log" 2>&1 &
  pids+=($!)
  local redis_args=() remote_args=()
  if [ -n "${TIERSCOPE_REDIS_URL:-}" ]; then
    redis_args=(--redis "$TIERSCOPE_REDIS_URL")
    remote_args=(--remote)
  fi
  "$bin" demo --no-progress --duration 25 --linger 60 --concurrency 2 \
    --metrics-addr "127.0.0.1:${demo_port}" "${redis_args[@]}" > "$tmp/demo.out" 2> "$tmp/demo.err" &
  pids+=($!)
  echo "demo on 127.0.0.1:${demo_port}, Prometheus on 127.0.0.1:${prom_port}; waiting 25 s for scrapes"
  sleep 25
  (cd tests/grafana-schema && node eval-queries.mjs --prometheus "http://127.0.0.1:${prom_port}" "${remote_args[@]}")
  local rc=$?
  [ $rc -eq 0 ] || { echo "--- demo stderr"; tail -20 "$tmp/demo.err"; echo "--- prometheus log"; tail -5 "$tmp/prometheus.log"; } >&2
  return $rc
}

if [ "$live" = 1 ]; then
  step live_check
fi

echo
echo "dashboards: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
