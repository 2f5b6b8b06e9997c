// One request: every entry of its id, oldest first, as a timeline (Started → Completed/Failed,
// with durations and errors).
import {
  api, el, errorText, formatCount, formatDuration, heading, href, notice, statusBadge, timeCell, verifyLink,
} from "./app.js";

const ROW = 26;
const LEFT = 180;
const WIDTH = 900;

// When an entry's work began: a finished entry carries its duration, so it began that long
// before it was written.
function begin(entry) {
  return entry.duration_us === undefined || entry.duration_us === null
    ? entry.timestamp : entry.timestamp - entry.duration_us / 1000;
}

function timeline(entries) {
  const lo = Math.min(...entries.map(begin));
  const hi = Math.max(...entries.map((e) => e.timestamp));
  const span = Math.max(hi - lo, 1);
  const x = (ms) => LEFT + ((ms - lo) / span) * (WIDTH - LEFT - 20);
  const height = entries.length * ROW + 30;
  const svg = el("svg", { class: "plot timeline", viewBox: `0 0 ${WIDTH} ${height}`, role: "img",
    "aria-label": `Timeline of ${entries.length} entries over ${formatDuration(Math.round(span * 1000))}` });
  svg.append(el("line", { class: "axis", x1: LEFT, x2: WIDTH - 20, y1: height - 22, y2: height - 22 }),
    el("text", { x: LEFT, y: height - 6 }, "+0 ms"),
    el("text", { x: WIDTH - 20, y: height - 6, "text-anchor": "end" }, `+${formatDuration(Math.round(span * 1000))}`));
  entries.forEach((entry, i) => {
    const y = i * ROW + 4;
    const label = entry.op_name.length > 24 ? entry.op_name.slice(0, 23) + "…" : entry.op_name;
    svg.append(el("text", { x: 4, y: y + 15 }, label));
    const tip = el("title", {}, `\u2068${entry.op_name}\u2069 ${entry.status} ${formatDuration(entry.duration_us)}`.trim()); // (the name isolated: FSI … PDI)
    if (entry.duration_us === undefined || entry.duration_us === null) {
      svg.append(el("circle", { class: "point", cx: x(entry.timestamp), cy: y + 10, r: 5 }, tip));
    } else {
      const x0 = x(begin(entry));
      const w = Math.max(x(entry.timestamp) - x0, 2);
      svg.append(el("rect", { class: entry.status === "Failed" ? "span-bar failed" : "span-bar", x: x0, y: y + 2, width: w, height: 16 }, tip));
    }
  });
  return svg;
}

export async function render(main, params) {
  const rid = params.get("id");
  main.append(heading("Request"));
  if (rid === null) {
    main.append(notice("", "Open a request from the trail (its request id is a link)."));
    return;
  }
  main.append(el("p", {}, "Request id ", el("code", { id: "request-id" }, rid), " — ",
    el("a", { href: href("", { request_id: rid }) }, "these entries in the trail")));
  const query = { id: rid };
  if (params.get("after")) query.after = params.get("after");
  const data = await api("request", query);
  const entries = data.entries;
  if (entries.length === 0) {
    main.append(notice("", "No entry of this request is in the journal."));
    return;
  }
  const first = entries[0];
  const last = entries[entries.length - 1];
  const outcome = last.status;
  const facts = el("dl", { class: "facts" },
    el("dt", {}, "Entries"), el("dd", {}, formatCount(entries.length) + (data.more ? " (more follow)" : "")),
    el("dt", {}, "Statuses"), el("dd", {}, Object.entries(data.statuses).filter(([, n]) => n).map(([s, n]) => `${n} ${s}`).join(", ")),
    el("dt", {}, "Outcome"), el("dd", {}, statusBadge(outcome)),
    el("dt", {}, "From"), el("dd", {}, timeCell(Math.round(begin(first)))),
    el("dt", {}, "To"), el("dd", {}, timeCell(last.timestamp)),
    el("dt", {}, "Span"), el("dd", {}, formatDuration(Math.round((last.timestamp - Math.min(...entries.map(begin))) * 1000))));
  main.append(facts, el("h2", {}, "Timeline"), timeline(entries), el("h2", {}, "Entries"));
  const rows = entries.map((entry) => el("li", { class: "step" },
    el("div", {}, el("span", { class: "mono" }, `+${formatDuration(Math.round((entry.timestamp - first.timestamp) * 1000)) || "0 µs"} `),
      timeCell(entry.timestamp), " ", el("strong", {}, entry.op_name), " ", statusBadge(entry.status),
      entry.duration_us !== undefined ? ` took ${formatDuration(entry.duration_us)}` : "", " ", verifyLink(entry.seq)),
    entry.error !== undefined ? el("div", {}, errorText(entry.error)) : null));
  main.append(el("ol", { class: "timeline-list" }, rows));
  if (data.more) {
    main.append(el("nav", { class: "pager", "aria-label": "More entries" },
      el("a", { href: href("request", { id: rid, after: data.after }) }, "Later entries →")));
  }
}
