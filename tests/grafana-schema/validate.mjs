// Validates every dashboards/*.json against Grafana's own `Dashboard` type.
//
// 1. ts-json-schema-generator turns the TypeScript type shipped in
//    @grafana/schema (dist/types/raw/dashboard/x/types.gen.d.ts) into a JSON
//    Schema. Interfaces become closed objects (additionalProperties: false),
//    so a misspelt or unknown key is an error, as are wrong types and
//    missing required fields.
// 2. ajv checks every dashboard against it.
// 3. Negative controls: deliberately broken copies of a dashboard (panels as
//    a string, a string grid width, a panel without type, ...) must be
//    REJECTED, and a minimal dashboard must be accepted; otherwise the
//    schema has been weakened into accepting anything and the run fails.
// 4. tierscope's own rules for its dashboards, which Grafana's type cannot
//    express: unique panel ids, grid positions, a description on every
//    panel, `${datasource}` on every panel and target, rate windows that use
//    $__rate_interval, ratios whose denominators are guarded with `> 0`,
//    variables that exist, remote-tier panels inside the collapsed
//    "Remote tier" row. These lint rules have negative controls too.
//
// Usage: node validate.mjs [--emit-promtool-rules FILE]
//   --emit-promtool-rules writes every panel query, with the template
//   variables substituted, as a Prometheus recording rule file, so that
//   `promtool check rules FILE` parses each query with Prometheus's own
//   parser (dashboards/check.sh does this).
//
// Exit status: 0 when everything passes, 1 otherwise.

import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import Ajv from "ajv";
import { createGenerator } from "ts-json-schema-generator";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..");
const dashboardsDir = join(repo, "dashboards");

// Where @grafana/schema keeps the generated Dashboard type. The first path
// is the one in the pinned version (see package.json); the others are where
// other releases have kept it.
const TYPE_CANDIDATES = [
  "node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts",
  "node_modules/@grafana/schema/dist/esm/raw/dashboard/x/types.gen.d.ts",
  "node_modules/@grafana/schema/src/raw/dashboard/x/types.gen.ts",
];

// Values the template variables take when a query is checked outside
// Grafana (the same ones the live query test uses).
export const SUBSTITUTIONS = {
  __rate_interval: "1m",
  cache: "modules",
  tier: "memory|disk",
  first_tier: "memory",
  remote_tier: "redis",
};

let failures = 0;
function fail(msg) {
  failures += 1;
  console.error(`FAIL ${msg}`);
}
function ok(msg) {
  console.log(`ok   ${msg}`);
}

// ---------------------------------------------------------------------------
// 1. Schema from Grafana's type
// ---------------------------------------------------------------------------

function buildSchema() {
  const rel = TYPE_CANDIDATES.find((p) => existsSync(join(here, p)));
  if (!rel) {
    console.error(
      `FAIL @grafana/schema's Dashboard type not found (looked for ${TYPE_CANDIDATES.join(", ")}); run npm ci in ${relative(process.cwd(), here) || "."}`,
    );
    process.exit(1);
  }
  const version = JSON.parse(readFileSync(join(here, "node_modules/@grafana/schema/package.json"), "utf8")).version;
  const schema = createGenerator({
    path: join(here, rel),
    type: "Dashboard",
    expose: "export",
    topRef: true,
    jsDoc: "extended",
    // Interfaces are closed: unknown keys are errors. Grafana itself ignores
    // unknown keys, but in a hand-written dashboard they are typos.
    additionalProperties: false,
    // The .d.ts imports nothing; type-checking it only costs time.
    skipTypeCheck: true,
  }).createSchema("Dashboard");

  // Guard against a generator change quietly opening the schema up.
  const defs = schema.definitions ?? {};
  const mustBeClosed = ["Dashboard", "Panel", "RowPanel", "GridPos", "VariableModel", "FieldConfigSource"];
  for (const name of mustBeClosed) {
    if (!defs[name]) fail(`generated schema has no definition for ${name}`);
    else if (defs[name].additionalProperties !== false) fail(`generated schema leaves ${name} open (additionalProperties is not false)`);
  }
  if (!defs.Dashboard?.required?.includes("schemaVersion")) fail("generated schema does not require Dashboard.schemaVersion");
  if (!defs.Panel?.required?.includes("type")) fail("generated schema does not require Panel.type");
  ok(`JSON Schema generated from @grafana/schema ${version} (${rel}), ${Object.keys(defs).length} definitions`);
  return schema;
}

function compile(schema) {
  // ajv's strict mode stays on: the generated schema compiles without
  // unknown keywords. Union types ("type": ["number", "null"]) are Grafana's
  // own, so they are allowed explicitly rather than reported.
  const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
  return ajv.compile(schema);
}

function schemaErrors(validate, dashboard) {
  if (validate(dashboard)) return [];
  return (validate.errors ?? []).map(
    (e) => `${e.instancePath || "/"} ${e.message}${e.params && Object.keys(e.params).length ? " " + JSON.stringify(e.params) : ""}`,
  );
}

// ---------------------------------------------------------------------------
// 2. tierscope's lint rules
// ---------------------------------------------------------------------------

function allPanels(dashboard) {
  const out = [];
  for (const p of dashboard.panels ?? []) {
    out.push({ panel: p, row: null });
    if (p.type === "row") for (const c of p.panels ?? []) out.push({ panel: c, row: p });
  }
  return out;
}

// The parenthesised group starting at s[i] === "(", or null.
function group(s, i) {
  if (s[i] !== "(") return null;
  let depth = 0;
  for (let j = i; j < s.length; j++) {
    if (s[j] === "(") depth++;
    else if (s[j] === ")" && --depth === 0) return s.slice(i + 1, j);
  }
  return null;
}

// Every division must be `x / (y > 0)` (or `> 0` at the end of a longer
// group), so that an idle series yields no value instead of NaN or Inf.
function unguardedDivisions(expr) {
  const bad = [];
  const re = /\/\s*/g;
  let m;
  while ((m = re.exec(expr))) {
    const start = m.index + m[0].length;
    const g = group(expr, start);
    if (g === null || !/>\s*0\s*$/.test(g.trim())) bad.push(expr.slice(m.index, m.index + 60));
  }
  return bad;
}

export function lint(dashboard) {
  const errors = [];
  const vars = new Map((dashboard.templating?.list ?? []).map((v) => [v.name, v]));

  const need = {
    datasource: (v) => v.type === "datasource" && v.query === "prometheus",
    cache: (v) => v.type === "query",
    tier: (v) => v.type === "query" && v.multi === true && v.includeAll === true,
    first_tier: (v) => ["query", "custom", "textbox", "constant"].includes(v.type),
    remote_tier: (v) => ["query", "custom", "textbox", "constant"].includes(v.type),
  };
  for (const [name, check] of Object.entries(need)) {
    const v = vars.get(name);
    if (!v) errors.push(`template variable ${name} is missing`);
    else if (!check(v)) errors.push(`template variable ${name} has the wrong shape (${JSON.stringify({ type: v.type, multi: v.multi, includeAll: v.includeAll, query: v.query })})`);
  }
  for (const v of vars.values()) {
    if (v.type === "query" && v.datasource?.uid !== "${datasource}") errors.push(`variable ${v.name}: datasource must be \${datasource}`);
  }

  if (typeof dashboard.schemaVersion !== "number" || dashboard.schemaVersion < 36 || dashboard.schemaVersion > 41)
    errors.push(`schemaVersion ${dashboard.schemaVersion} outside 36..41`);

  const ids = new Map();
  for (const { panel, row } of allPanels(dashboard)) {
    const name = `panel ${panel.id} "${panel.title}"`;
    if (typeof panel.id !== "number") errors.push(`${name}: no numeric id`);
    else if (ids.has(panel.id)) errors.push(`${name}: id also used by "${ids.get(panel.id)}"`);
    else ids.set(panel.id, panel.title);

    const g = panel.gridPos;
    if (!g || ![g.h, g.w, g.x, g.y].every(Number.isInteger)) errors.push(`${name}: gridPos missing or not integers`);
    else if (g.x < 0 || g.w < 1 || g.x + g.w > 24) errors.push(`${name}: gridPos outside the 24-column grid`);
    if (panel.type === "row") continue;

    if (!panel.description || panel.description.trim().length < 40) errors.push(`${name}: needs a description telling the operator what it means and what to do`);
    if (panel.datasource?.uid !== "${datasource}") errors.push(`${name}: panel datasource must be \${datasource}`);
    const targets = panel.targets ?? [];
    if (targets.length === 0) errors.push(`${name}: no targets`);
    const refIds = new Set();
    for (const t of targets) {
      const tn = `${name} target ${t.refId}`;
      if (refIds.has(t.refId)) errors.push(`${tn}: duplicate refId`);
      refIds.add(t.refId);
      if (t.datasource?.uid !== "${datasource}") errors.push(`${tn}: datasource must be \${datasource}`);
      if (typeof t.expr !== "string" || !t.expr.trim()) {
        errors.push(`${tn}: empty expr`);
        continue;
      }
      for (const [, w] of t.expr.matchAll(/\[([^\]]*)\]/g)) {
        if (w !== "$__rate_interval") errors.push(`${tn}: range [${w}] should be [$__rate_interval]`);
      }
      if (/\$__interval\b|\$__range\b|\$__auto/.test(t.expr)) errors.push(`${tn}: only $__rate_interval is allowed among Grafana's macros`);
      for (const [, v1, v2] of t.expr.matchAll(/\$\{(\w+)[^}]*\}|\$(\w+)/g)) {
        const v = v1 ?? v2;
        if (/^\d+$/.test(v) || v === "__rate_interval") continue; // $1 is label_replace's
        if (!vars.has(v)) errors.push(`${tn}: uses undefined variable $${v}`);
      }
      for (const d of unguardedDivisions(t.expr)) errors.push(`${tn}: unguarded division "${d}…" (write x / (y > 0) so an idle series shows no value, not NaN)`);
      const usesRemote = /\$\{?remote_tier\b/.test(t.expr);
      if (usesRemote && !(row && row.collapsed && /^Remote tier/.test(row.title ?? "")))
        errors.push(`${tn}: uses $remote_tier outside the collapsed "Remote tier" row`);
    }
  }

  // Overlaps among the panels shown when the dashboard opens (top level)
  // and among each row's own panels.
  const overlapCheck = (list, where) => {
    for (let i = 0; i < list.length; i++)
      for (let j = i + 1; j < list.length; j++) {
        const a = list[i].gridPos, b = list[j].gridPos;
        if (!a || !b) continue;
        if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h)
          errors.push(`${where}: panels ${list[i].id} and ${list[j].id} overlap`);
      }
  };
  overlapCheck(dashboard.panels ?? [], "top level");
  for (const p of dashboard.panels ?? []) if (p.type === "row") overlapCheck(p.panels ?? [], `row "${p.title}"`);
  return errors;
}

export function substitute(expr, values = SUBSTITUTIONS) {
  return expr.replace(/\$\{(\w+)(?::\w+)?\}|\$(\w+)/g, (all, a, b) => {
    const name = a ?? b;
    return Object.hasOwn(values, name) ? values[name] : all;
  });
}

// ---------------------------------------------------------------------------
// 3. Negative and positive controls
// ---------------------------------------------------------------------------

const clone = (x) => structuredClone(x);
const firstLeaf = (d) => d.panels.find((p) => p.type !== "row");

const SCHEMA_MUST_REJECT = [
  ["panels is a string", (d) => { d.panels = "not a list of panels"; }],
  ["a panel's gridPos.w is a string", (d) => { firstLeaf(d).gridPos.w = "12"; }],
  ["a panel has no type", (d) => { delete firstLeaf(d).type; }],
  ["an unknown top-level key (typo of title)", (d) => { d.titel = d.title; }],
  ["an unknown panel key (typo of description)", (d) => { const p = firstLeaf(d); p.descripton = p.description; delete p.description; }],
  ["schemaVersion is a string", (d) => { d.schemaVersion = "39"; }],
  ["schemaVersion is missing", (d) => { delete d.schemaVersion; }],
  ["a variable has an unknown type", (d) => { d.templating.list[0].type = "quer"; }],
  ["a row is not collapsible (collapsed missing)", (d) => { const r = d.panels.find((p) => p.type === "row"); delete r.collapsed; }],
  ["fieldConfig without overrides", (d) => { delete firstLeaf(d).fieldConfig.overrides; }],
  ["the whole dashboard is an array", () => []],
];

const LINT_MUST_FLAG = [
  ["duplicate panel id", (d) => { const leaves = allPanels(d).map((x) => x.panel).filter((p) => p.type !== "row"); leaves[1].id = leaves[0].id; }],
  ["a hard-coded rate window", (d) => { firstLeaf(d).targets[0].expr = "sum(rate(tierscope_lookups_total[5m]))"; }],
  ["an unguarded ratio", (d) => { firstLeaf(d).targets[0].expr = "sum(rate(tierscope_lookups_total{result=\"hit\"}[$__rate_interval])) / sum(rate(tierscope_lookups_total[$__rate_interval]))"; }],
  ["a panel without description", (d) => { delete firstLeaf(d).description; }],
  ["a fixed datasource", (d) => { firstLeaf(d).targets[0].datasource = { type: "prometheus", uid: "abc" }; }],
  ["an undefined variable", (d) => { firstLeaf(d).targets[0].expr = "tierscope_entries{cache=\"$cahce\"}"; }],
  ["$remote_tier outside the Remote tier row", (d) => { firstLeaf(d).targets[0].expr = "tierscope_tier_available{tier=\"$remote_tier\"}"; }],
  ["the tier variable not multi-valued", (d) => { d.templating.list.find((v) => v.name === "tier").multi = false; }],
];

function controls(validate, sample, sampleName) {
  const minimal = { schemaVersion: 39, title: "minimal", panels: [] };
  const minimalErrors = schemaErrors(validate, minimal);
  if (minimalErrors.length) fail(`control: a minimal dashboard ${JSON.stringify(minimal)} is rejected — the schema rejects everything: ${minimalErrors.join("; ")}`);
  else ok("control: a minimal dashboard is accepted");

  for (const [what, mutate] of SCHEMA_MUST_REJECT) {
    const d = clone(sample);
    const replaced = mutate(d);
    const errs = schemaErrors(validate, replaced ?? d);
    if (errs.length === 0) fail(`control: the schema ACCEPTS a dashboard where ${what} (from ${sampleName}) — it has been weakened`);
    else ok(`control: the schema rejects a dashboard where ${what} (${errs[0]})`);
  }
  for (const [what, mutate] of LINT_MUST_FLAG) {
    const d = clone(sample);
    mutate(d);
    const errs = lint(d);
    if (errs.length === 0) fail(`control: the lint ACCEPTS a dashboard with ${what}`);
    else ok(`control: the lint flags ${what} (${errs[0]})`);
  }
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

function main() {
  const args = process.argv.slice(2);
  let emitRules = null;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === "--emit-promtool-rules") emitRules = args[++i];
    else {
      console.error(`unknown argument ${args[i]}`);
      process.exit(2);
    }
  }

  const files = readdirSync(dashboardsDir).filter((f) => f.endsWith(".json")).sort();
  if (files.length === 0) {
    console.error(`FAIL no dashboards/*.json found in ${dashboardsDir}`);
    process.exit(1);
  }

  const validate = compile(buildSchema());
  const dashboards = [];
  for (const f of files) {
    let d;
    try {
      d = JSON.parse(readFileSync(join(dashboardsDir, f), "utf8"));
    } catch (e) {
      fail(`${f}: not valid JSON: ${e.message}`);
      continue;
    }
    dashboards.push([f, d]);
    const errs = schemaErrors(validate, d);
    if (errs.length) {
      fail(`${f}: does not match Grafana's Dashboard type:`);
      for (const e of errs) console.error(`       ${e}`);
    } else ok(`${f}: matches Grafana's Dashboard type`);
    const lintErrs = lint(d);
    if (lintErrs.length) {
      fail(`${f}: tierscope dashboard rules:`);
      for (const e of lintErrs) console.error(`       ${e}`);
    } else {
      const n = allPanels(d).filter((x) => x.panel.type !== "row").length;
      const t = allPanels(d).reduce((s, x) => s + (x.panel.targets?.length ?? 0), 0);
      ok(`${f}: tierscope dashboard rules (${n} panels, ${t} queries)`);
    }
  }

  if (dashboards.length) controls(validate, dashboards[0][1], dashboards[0][0]);

  if (emitRules) {
    const lines = ["# Generated by tests/grafana-schema/validate.mjs: every dashboard query, variables substituted,", "# as recording rules so that `promtool check rules` parses them. Not for loading into Prometheus.", "groups:"];
    for (const [f, d] of dashboards) {
      lines.push(`  - name: ${JSON.stringify(f)}`, "    rules:");
      for (const { panel } of allPanels(d)) {
        for (const t of panel.targets ?? []) {
          lines.push(`      - record: dashboard_query:panel_${panel.id}_${t.refId}`);
          lines.push(`        expr: ${JSON.stringify(substitute(t.expr))}`);
        }
      }
    }
    writeFileSync(emitRules, lines.join("\n") + "\n");
    ok(`wrote every query as a rule to ${emitRules} (for promtool check rules)`);
  }

  if (failures) {
    console.error(`\n${failures} check(s) failed`);
    process.exit(1);
  }
  console.log("\nall dashboard checks passed");
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) main();
