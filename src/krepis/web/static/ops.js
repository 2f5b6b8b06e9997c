// Ops: per-op counts, failure rate and duration percentiles over a window, and plots over time
// (entries and failures per bucket, duration p50/p95/p99), drawn here as SVG.
import { ROOT, api, el, exactOp, formatCount, formatDuration, formatTime, heading, href, notice } from "./app.js";

const W = 960;
const H = 240;
const PAD = { left: 64, right: 16, top: 14, bottom: 30 };
const WINDOWS = [["1h", "Last hour"], ["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"], ["", "All"]];

function windowForm(params) {
  const field = (name, label, hint) => el("label", {}, label,
    el("input", { type: "text", name, value: params.get(name) || "", placeholder: hint, autocomplete: "off" }));
  return el("form", { class: "filters", method: "get", action: ROOT + "ops", "aria-label": "Choose the window" },
    field("since", "Since", "24h, yesterday, 2026-01-31"), field("until", "Until", "now"),
    field("op", "Op (glob)", "all ops"),
    el("label", {}, "Bucket", el("select", { name: "bucket" }, ...["auto", "minute", "5min", "15min", "hour", "6hour", "day", "week"].map(
      (b) => el("option", { value: b, selected: (params.get("bucket") || "auto") === b }, b)))),
    el("button", { type: "submit" }, "Show"));
}

function quickLinks(params) {
  const op = params.get("op");
  return el("nav", { class: "toolbar", "aria-label": "Windows" }, ...WINDOWS.map(([since, label]) =>
    el("a", { href: href("ops", { since, op }), "aria-current": (params.get("since") || "") === since ? "true" : null }, label)));
}

function scale(lo, hi, a, b) {
  const span = hi - lo || 1;
  return (v) => a + ((v - lo) / span) * (b - a);
}

function axes(svg, yMax, yLabel, start, end) {
  const y = scale(0, yMax, H - PAD.bottom, PAD.top);
  for (const frac of [0, 0.5, 1]) {
    const v = yMax * frac;
    svg.append(el("line", { class: frac ? "grid" : "axis", x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v) }),
      el("text", { x: PAD.left - 6, y: y(v) + 4, "text-anchor": "end" }, yLabel(v)));
  }
  svg.append(el("text", { x: PAD.left, y: H - 8 }, formatTime(start).slice(0, 16)),
    el("text", { x: W - PAD.right, y: H - 8, "text-anchor": "end" }, formatTime(end).slice(0, 16)));
}

export function countsPlot(series) {
  const points = series.points;
  const yMax = Math.max(1, ...points.map((p) => p.entries));
  const svg = el("svg", { class: "plot", id: "plot-counts", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `Entries and failures per ${series.bucket}: ${formatCount(series.entries)} entries` });
  axes(svg, yMax, (v) => formatCount(Math.round(v)), series.start, series.start + points.length * series.bucket_ms);
  const x = scale(0, points.length, PAD.left, W - PAD.right);
  const y = scale(0, yMax, H - PAD.bottom, PAD.top);
  const w = Math.max((W - PAD.left - PAD.right) / points.length - 1, 0.5);
  points.forEach((p, i) => {
    if (!p.entries) return;
    const tip = `${formatTime(p.t).slice(0, 16)}: ${formatCount(p.entries)} entries, ${formatCount(p.failed)} failed`;
    svg.append(el("rect", { class: "bar-entries", x: x(i), y: y(p.entries), width: w, height: y(0) - y(p.entries),
      "data-t": p.t, "data-entries": p.entries, "data-failed": p.failed }, el("title", {}, tip)));
    if (p.failed) {
      svg.append(el("rect", { class: "bar-failed", x: x(i), y: y(p.failed), width: w, height: y(0) - y(p.failed) },
        el("title", {}, tip)));
    }
  });
  return svg;
}

export function durationPlot(series) {
  const points = series.points;
  const yMax = Math.max(1, ...points.map((p) => p.p99_us || 0));
  const svg = el("svg", { class: "plot", id: "plot-durations", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": `Duration percentiles per ${series.bucket}` });
  axes(svg, yMax, (v) => formatDuration(Math.round(v)), series.start, series.start + points.length * series.bucket_ms);
  const x = scale(0, points.length, PAD.left, W - PAD.right);
  const y = scale(0, yMax, H - PAD.bottom, PAD.top);
  const half = (W - PAD.left - PAD.right) / points.length / 2;
  for (const key of ["p50_us", "p95_us", "p99_us"]) {
    const coords = [];
    points.forEach((p, i) => {
      if (p[key] !== null && p[key] !== undefined) coords.push(`${(x(i) + half).toFixed(1)},${y(p[key]).toFixed(1)}`);
    });
    if (coords.length === 1) coords.push(coords[0]);
    if (coords.length) {
      svg.append(el("polyline", { class: "line-" + key.slice(0, 3), points: coords.join(" ") },
        el("title", {}, key.slice(0, 3))));
    }
  }
  return svg;
}

function dataTable(series) {
  const rows = series.points.filter((p) => p.entries).map((p) => el("tr", {},
    el("td", {}, formatTime(p.t).slice(0, 16)), el("td", { class: "num" }, formatCount(p.entries)),
    el("td", { class: "num" }, formatCount(p.failed)), el("td", { class: "num" }, formatDuration(p.p50_us)),
    el("td", { class: "num" }, formatDuration(p.p95_us)), el("td", { class: "num" }, formatDuration(p.p99_us))));
  return el("details", {}, el("summary", {}, "The plotted numbers"),
    el("table", { id: "series-table" }, el("thead", {}, el("tr", {}, ["Bucket start", "Entries", "Failed", "p50", "p95", "p99"].map(
      (h) => el("th", { scope: "col" }, h)))), el("tbody", {}, rows)));
}

function legend(...keys) {
  return el("div", { class: "legend" }, keys.map(([k, label]) => el("span", {}, el("span", { class: "key k-" + k }), label)));
}

function summaryTable(summary, params) {
  const since = params.get("since");
  const head = ["Op", "Entries", "Started", "Completed", "Failed", "Failure rate", "p50", "p95", "p99", "Max"];
  const row = (r, total) => el("tr", { class: total ? "total" : null },
    total ? el("th", { scope: "row" }, "All ops") : el("th", { scope: "row" },
      el("a", { href: href("ops", { since, until: params.get("until"), op: exactOp(r.op) }) }, r.op), " ",
      el("a", { href: href("", { op: exactOp(r.op), since, until: params.get("until") }), class: "muted", "aria-label": `trail of ${r.op}` }, "(trail)")),
    ...[r.entries, r.started, r.completed, r.failed].map((n) => el("td", { class: "num" }, formatCount(n))),
    el("td", { class: "num" }, r.failure_rate === null ? "—" : `${(r.failure_rate * 100).toFixed(2)} %`),
    ...[r.p50_us, r.p95_us, r.p99_us, r.max_us].map((d) => el("td", { class: "num" }, formatDuration(d))));
  return el("div", { class: "table-scroll" }, el("table", { id: "ops-table" },
    el("thead", {}, el("tr", {}, head.map((h, i) => el("th", { scope: "col", class: i ? "num" : null }, h)))),
    el("tbody", {}, summary.rows.map((r) => row(r, false)), summary.total && summary.rows.length > 1 ? row(summary.total, true) : null)));
}

export async function render(main, params) {
  main.append(heading("Ops"), windowForm(params), quickLinks(params));
  const query = new URLSearchParams();
  for (const key of ["since", "until", "op", "status", "bucket"]) for (const v of params.getAll(key)) if (v) query.append(key, v);
  query.set("now", String(Date.now()));
  const [summary, series] = await Promise.all([api("summary", query), api("series", query).catch((err) => err)]);
  main.append(el("h2", {}, params.get("op") ? `Per op (${params.get("op")})` : "Per op"));
  if (!summary.rows.length) main.append(notice("", "No entry in this window."));
  else main.append(summaryTable(summary, params));
  main.append(el("h2", {}, "Over time"));
  if (series instanceof Error) {
    main.append(notice("bad", series.message));
    return;
  }
  if (!series.points.length) {
    main.append(notice("", "Nothing to plot in this window."));
    return;
  }
  main.append(el("p", { class: "muted" }, `${formatCount(series.entries)} entries, per ${series.bucket}, UTC-aligned buckets.`),
    legend(["entries", "entries"], ["failed", "failed"]), countsPlot(series),
    legend(["p50", "p50"], ["p95", "p95"], ["p99", "p99"]), durationPlot(series), dataTable(series));
}
