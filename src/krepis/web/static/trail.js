// The trail: entries newest first, the filters of `krepis logs`, keyset paging by sequence
// number, and a live mode that adds entries as they are written (one event stream per tab).
import {
  ROOT, api, el, errorText, exactOp, formatCount, formatDuration, heading, href, notice, requestLink,
  statusBadge, timeCell, verifyLink,
} from "./app.js";

const FILTERS = ["op", "status", "request_id", "prefix", "since", "until", "q", "now", "limit"];
const LIVE_ROWS = 1000; // rows kept on screen in live mode

function filterParams(params) {
  const out = new URLSearchParams();
  for (const [key, value] of params) if (FILTERS.includes(key) && value !== "") out.append(key, value);
  return out;
}

function textField(name, label, value, hint) {
  return el("label", {}, label,
    el("input", { type: "text", name, value: value || "", placeholder: hint || "", autocomplete: "off", spellcheck: "false" }));
}

function filterForm(params) {
  const statuses = params.getAll("status").map((s) => s.toLowerCase());
  const ops = params.getAll("op");
  const rids = params.getAll("request_id");
  return el("form", { class: "filters", method: "get", action: ROOT, role: "search", "aria-label": "Filter entries" },
    ...(ops.length ? ops : [""]).map((op) => textField("op", "Op (glob: op_*)", op, "op_charge")),
    el("fieldset", {}, el("legend", {}, "Status"),
      ...["Started", "Completed", "Failed"].map((s) => el("label", { class: "check" },
        el("input", { type: "checkbox", name: "status", value: s, checked: statuses.includes(s.toLowerCase()) }), " " + s))),
    ...(rids.length ? rids : [""]).map((rid) => textField("request_id", "Request id", rid)),
    el("label", { class: "check" }, el("input", { type: "checkbox", name: "prefix", value: "1", checked: params.get("prefix") === "1" }),
      " id is a prefix"),
    textField("since", "Since", params.get("since"), "1h, yesterday, 2026-01-31T12:00"),
    textField("until", "Until", params.get("until"), "now"),
    el("label", {}, "Search text", el("input", { type: "search", name: "q", value: params.get("q") || "", placeholder: "op, request id or error" })),
    el("label", {}, "Per page", el("select", { name: "limit" },
      ...["50", "100", "200", "500"].map((n) => el("option", { value: n, selected: (params.get("limit") || "100") === n }, n)))),
    el("button", { type: "submit" }, "Apply"),
    el("a", { href: ROOT, class: "button secondary" }, "Reset"));
}

export function entryRow(entry, fresh = false) {
  return el("tr", { class: fresh ? "fresh" : null, "data-seq": entry.seq },
    el("td", { class: "time", "data-label": "Time" }, timeCell(entry.timestamp)),
    el("td", { class: "op", "data-label": "Op" }, el("a", { href: href("", { op: exactOp(entry.op_name) }) }, entry.op_name)),
    el("td", { class: "rid-cell", "data-label": "Request" }, requestLink(entry.request_id)),
    el("td", { "data-label": "Status" }, statusBadge(entry.status)),
    el("td", { class: "num", "data-label": "Duration" }, formatDuration(entry.duration_us)),
    el("td", { "data-label": "Error" }, errorText(entry.error)),
    el("td", { class: "num", "data-label": "Seq" }, verifyLink(entry.seq)));
}

export function entriesTable(entries, caption) {
  const body = el("tbody", {}, entries.map((e) => entryRow(e)));
  const table = el("table", { class: "entries" },
    el("caption", { class: "sr-only" }, caption),
    el("thead", {}, el("tr", {}, ["Time", "Op", "Request", "Status", "Duration", "Error", "Seq"].map(
      (h) => el("th", { scope: "col", class: h === "Duration" || h === "Seq" ? "num" : null }, h)))),
    body);
  return { table, body };
}

export async function render(main, params) {
  main.append(heading("Trail"), filterForm(params));
  const query = filterParams(params);
  for (const key of ["after", "before"]) if (params.get(key)) query.set(key, params.get(key));
  if (!query.get("now") && (params.get("since") || params.get("until"))) {
    // relative times ("1h") are read once, so that paging keeps the same window
    query.set("now", String(Date.now()));
  }
  const page = await api("trail", query);
  const first = !params.get("after") && !params.get("before");
  const status = el("p", { class: "muted", id: "trail-status", role: "status" });
  const describe = () => {
    const n = body.children.length;
    status.replaceChildren(`${formatCount(n)} ${n === 1 ? "entry" : "entries"}, newest first` +
      (page.scanned && page.budget_spent ? ` — looked at ${formatCount(page.scanned)} entries for this page` : ""));
  };
  const { table, body } = entriesTable(page.entries, "Journal entries, newest first");
  const toolbar = el("div", { class: "toolbar" }, status, el("span", { class: "spacer" }));
  main.append(toolbar);
  if (page.budget_spent) {
    main.append(notice("warn", `The page did not fill within the ${formatCount(page.scanned)} entries one page looks at. `,
      page.older !== null ? el("a", { href: href("", pageParams(query, { after: page.older })) }, "Continue searching older entries →") : ""));
  }
  if (page.entries.length === 0 && !page.budget_spent) {
    main.append(notice("", query.toString() ? "No entry matches these filters." : "The journal has no entries yet."));
  }
  main.append(el("div", { class: "table-scroll" }, table), pager(query, page, first));
  describe();
  if (first) liveControls(toolbar, query, page, body, describe, params.get("live") === "1");
}

function pageParams(query, extra) {
  const out = new URLSearchParams(query);
  out.delete("after");
  out.delete("before");
  for (const [k, v] of Object.entries(extra)) out.set(k, String(v));
  return out;
}

function pager(query, page, first) {
  const nav = el("nav", { class: "pager", "aria-label": "Pages of entries" });
  if (!first) nav.append(el("a", { href: href("", pageParams(query, {})) }, "⇤ Newest"));
  if (page.newer !== null && page.newer !== undefined) {
    nav.append(el("a", { href: href("", pageParams(query, { before: page.newer })), rel: "prev" }, "← Newer"));
  }
  if (page.older !== null && page.older !== undefined) {
    nav.append(el("a", { href: href("", pageParams(query, { after: page.older })), rel: "next" }, "Older →"));
  }
  return nav;
}

function liveControls(toolbar, query, page, body, describe, auto) {
  const state = el("span", { class: "live-state muted", role: "status", "aria-live": "polite" });
  const button = el("button", { type: "button", class: "secondary", "aria-pressed": "false", id: "live-toggle" }, "Live");
  toolbar.append(button, state);
  const seen = new Set(page.entries.map((e) => e.seq));
  let source = null;
  let added = 0;

  const stop = (text) => {
    if (source) source.close();
    source = null;
    button.setAttribute("aria-pressed", "false");
    state.textContent = text || "";
    const url = new URL(location.href);
    url.searchParams.delete("live");
    history.replaceState(null, "", url);
  };

  const start = () => {
    const live = new URLSearchParams(query);
    live.delete("limit");
    live.set("from", String(page.next_seq));
    source = new EventSource(href("api/live", live));
    button.setAttribute("aria-pressed", "true");
    state.textContent = "live: connecting…";
    const url = new URL(location.href);
    url.searchParams.set("live", "1");
    history.replaceState(null, "", url);
    source.addEventListener("open", () => { state.textContent = "live: new entries appear at the top"; });
    source.addEventListener("entries", (event) => {
      let entries;
      try {
        entries = JSON.parse(event.data);
      } catch {
        return;
      }
      for (const entry of entries) {
        if (seen.has(entry.seq)) continue;
        seen.add(entry.seq);
        body.prepend(entryRow(entry, true));
        added += 1;
        page.next_seq = Math.max(page.next_seq, entry.seq + 1);
      }
      while (body.children.length > LIVE_ROWS) body.lastElementChild.remove();
      state.textContent = `live: ${formatCount(added)} new`;
      describe();
    });
    source.addEventListener("behind", (event) => {
      let info = {};
      try {
        info = JSON.parse(event.data);
      } catch {
        // keep the plain message
      }
      toolbar.after(notice("warn", `This tab fell behind: ${formatCount(info.skipped)} entries (seq ${info.from}…${info.to}) ` +
        "were not shown. ", el("a", { href: href("", query) }, "Reload the newest entries")));
    });
    source.addEventListener("cleared", () => {
      toolbar.after(notice("warn", "The journal was cleared: a new log began."));
    });
    source.addEventListener("error", () => {
      if (source && source.readyState === EventSource.CLOSED) stop("live: the server closed the stream (busy or stopped)");
      else state.textContent = "live: reconnecting…";
    });
  };

  button.addEventListener("click", () => (source ? stop("") : start()));
  if (auto) start();
}
