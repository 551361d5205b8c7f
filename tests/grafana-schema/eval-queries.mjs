// Evaluates every dashboard query and every recording rule against a live
// Prometheus that scrapes a tierscope exporter (e.g. `tierscope demo`), and
// fails when one returns nothing.
//
//   node eval-queries.mjs --prometheus http://127.0.0.1:9090 [--cache modules]
//                         [--tiers memory,disk] [--remote]
//
// Template variables are substituted as Grafana would, after the Prometheus
// data source's defaults: $__rate_interval -> 1m, $cache -> --cache,
// $tier -> each of: all tiers as a regex ("memory|disk") and the first tier
// alone, $first_tier -> the first of --tiers, $remote_tier -> redis.
// Panels in the collapsed "Remote tier" row need a remote tier: they are
// evaluated only with --remote (the demo run with --redis), otherwise
// listed as skipped.
// Recording rules are read from the Prometheus server (/api/v1/rules), so
// load dashboards/prometheus/rules/*.yml into it; each rule's expression is
// evaluated as an instant query.
// Ratio panels (unit percentunit) must also never return NaN or Inf.
//
// Exit status: 0 when every query returned data, 1 otherwise.

import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { substitute } from "./validate.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const dashboardsDir = resolve(here, "..", "..", "dashboards");

function parseArgs(argv) {
  const opts = { prometheus: "http://127.0.0.1:9090", cache: "modules", tiers: ["memory", "disk"], remote: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--prometheus") opts.prometheus = argv[++i];
    else if (a === "--cache") opts.cache = argv[++i];
    else if (a === "--tiers") opts.tiers = argv[++i].split(",");
    else if (a === "--remote") opts.remote = true;
    else {
      console.error(`unknown argument ${a}`);
      process.exit(2);
    }
  }
  return opts;
}

async function query(base, expr) {
  const url = `${base}/api/v1/query?query=${encodeURIComponent(expr)}`;
  const res = await fetch(url);
  const body = await res.json();
  if (body.status !== "success") throw new Error(`${body.errorType}: ${body.error}`);
  return body.data.result;
}

function valuesOf(result) {
  return result.map((r) => Number(r.value?.[1]));
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const base = opts.prometheus.replace(/\/$/, "");
  let passed = 0, failed = 0, skipped = 0;
  const report = (okay, what, detail = "") => {
    if (okay) passed++;
    else failed++;
    console.log(`${okay ? "ok  " : "FAIL"} ${what}${detail ? "  " + detail : ""}`);
  };

  const tierSets = [opts.tiers.join("|"), opts.tiers[0]];
  for (const f of readdirSync(dashboardsDir).filter((x) => x.endsWith(".json")).sort()) {
    const d = JSON.parse(readFileSync(join(dashboardsDir, f), "utf8"));
    const items = [];
    for (const p of d.panels ?? []) {
      if (p.type === "row") for (const c of p.panels ?? []) items.push({ panel: c, row: p });
      else items.push({ panel: p, row: null });
    }
    for (const { panel, row } of items) {
      const remote = Boolean(row?.collapsed && /^Remote tier/.test(row.title ?? ""));
      for (const t of panel.targets ?? []) {
        const name = `${f} panel ${panel.id} "${panel.title}" ${t.refId}`;
        if (remote && !opts.remote) {
          skipped++;
          console.log(`skip ${name}  (needs the remote tier: run the demo with --redis and pass --remote)`);
          continue;
        }
        for (const tier of remote ? [[...opts.tiers, "redis"].join("|")] : tierSets) {
          const expr = substitute(t.expr, {
            __rate_interval: "1m",
            cache: opts.cache,
            tier,
            first_tier: opts.tiers[0],
            remote_tier: "redis",
          });
          try {
            const result = await query(base, expr);
            if (result.length === 0) {
              report(false, `${name} [tier=${tier}]`, `empty result for: ${expr}`);
              continue;
            }
            const vals = valuesOf(result);
            const ratio = panel.fieldConfig?.defaults?.unit === "percentunit";
            if (ratio && vals.some((v) => !Number.isFinite(v))) {
              report(false, `${name} [tier=${tier}]`, `NaN/Inf in a ratio: ${JSON.stringify(result.map((r) => [r.metric, r.value[1]]))}`);
              continue;
            }
            report(true, `${name} [tier=${tier}]`, `${result.length} series`);
          } catch (e) {
            report(false, `${name} [tier=${tier}]`, `${e.message} in: ${expr}`);
          }
        }
      }
    }
  }

  let groups;
  try {
    const res = await fetch(`${base}/api/v1/rules`);
    groups = (await res.json()).data.groups;
  } catch (e) {
    report(false, "read the rules from /api/v1/rules", e.message);
    groups = [];
  }
  let recording = 0;
  for (const g of groups) {
    for (const r of g.rules) {
      if (r.type !== "recording") continue;
      recording++;
      try {
        const result = await query(base, r.query);
        const bad = valuesOf(result).filter((v) => !Number.isFinite(v));
        if (result.length === 0) report(false, `rule ${r.name}`, `empty result for: ${r.query}`);
        else if (bad.length) report(false, `rule ${r.name}`, `NaN/Inf: ${JSON.stringify(result.map((x) => [x.metric, x.value[1]]))}`);
        else report(true, `rule ${r.name}`, result.map((x) => `${JSON.stringify(x.metric)}=${Number(x.value[1]).toPrecision(4)}`).join(" "));
      } catch (e) {
        report(false, `rule ${r.name}`, e.message);
      }
    }
  }
  if (recording === 0) report(false, "recording rules", "Prometheus has no recording rules loaded (load dashboards/prometheus/rules/*.yml)");

  console.log(`\n${passed} passed, ${failed} failed, ${skipped} skipped`);
  process.exit(failed ? 1 : 0);
}

main();
