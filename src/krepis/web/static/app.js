// The krepis console: shared helpers and the router. Every text from the journal reaches the
// page through el() as a text node or an attribute value set with setAttribute; nothing here
// assigns markup from a string (the Content-Security-Policy requires Trusted Types, so such an
// assignment would throw).

export const ROOT = new URL("..", import.meta.url).pathname;
const SVG_NS = "http://www.w3.org/2000/svg";
const SVG_TAGS = new Set(["svg", "g", "rect", "line", "polyline", "text", "title", "circle", "path"]);

export function el(tag, attrs = {}, ...children) {
  const node = SVG_TAGS.has(tag) ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") node.addEventListener(name.replace(/^on/, ""), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  add(node, children);
  return node;
}

function add(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) add(node, child);
    else if (child instanceof Node) node.append(child);
    else node.append(document.createTextNode(String(child)));
  }
}

// A link inside the console: the path and its query built with URLSearchParams, so that no
// value can become a scheme or leave the console.
// An op name as a filter that matches exactly that name: the filters read `*`, `?` and `[` as a
// glob's, so each is put in brackets (`a[1]` → `a[[]1]`), which matches the character itself.
export function exactOp(name) {
  return String(name).replace(/[*?[]/g, (c) => `[${c}]`);
}

export function href(path, params) {
  const query = params instanceof URLSearchParams ? params : new URLSearchParams();
  if (!(params instanceof URLSearchParams)) {
    for (const [key, value] of Object.entries(params || {})) {
      for (const v of Array.isArray(value) ? value : [value]) {
        if (v !== null && v !== undefined && v !== "") query.append(key, String(v));
      }
    }
  }
  const text = query.toString();
  return ROOT + path + (text ? "?" + text : "");
}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export async function api(path, params, as = "json") {
  let response;
  for (let attempt = 0; ; attempt += 1) {
    response = await fetch(href("api/" + path, params), { credentials: "same-origin", cache: "no-store" });
    // busy (the console runs few heavy reads at once): wait as the server asks, a few times
    if (response.status !== 503 || attempt === 3 || !response.headers.has("retry-after")) break;
    const wait = Number(response.headers.get("retry-after"));
    await sleep(1000 * Math.min(5, Number.isFinite(wait) && wait > 0 ? wait : 1));
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch {
      // not JSON: keep the status line
    }
    throw new ApiError(message, response.status);
  }
  if (as === "json") return response.json();
  if (as === "text") return response.text();
  return new Uint8Array(await response.arrayBuffer());
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

export function formatTime(ms) {
  const d = new Date(Number(ms));
  if (Number.isNaN(d.getTime())) return String(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function isoTime(ms) {
  const d = new Date(Number(ms));
  return Number.isNaN(d.getTime()) ? "" : d.toISOString();
}

export function timeCell(ms) {
  return el("time", { datetime: isoTime(ms), title: isoTime(ms) + " (UTC)" }, formatTime(ms));
}

export function formatDuration(us) {
  if (us === null || us === undefined) return "";
  if (us < 1000) return `${us} µs`;
  if (us < 1_000_000) return `${(us / 1000).toFixed(us < 10_000 ? 2 : 1)} ms`;
  return `${(us / 1_000_000).toFixed(2)} s`;
}

export function formatCount(n) {
  return n === null || n === undefined ? "" : Number(n).toLocaleString("en-US");
}

const STATUS_CLASS = { Started: "st-started", Completed: "st-completed", Failed: "st-failed" };

export function statusBadge(status) {
  return el("span", { class: "badge " + (STATUS_CLASS[status] || "st-other") }, status);
}

export function requestLink(rid) {
  return el("a", { href: href("request", { id: rid }), class: "rid" }, rid);
}

export function verifyLink(seq) {
  return el("a", { href: href("verify", { seq }), "aria-label": `verify entry ${seq}`, class: "seq" }, `#${seq}`);
}

// An error text: the first 300 characters, and the whole of it (up to 16 KiB) behind a toggle.
export function errorText(text) {
  if (text === null || text === undefined) return "";
  if (text.length <= 300) return el("span", { class: "error-text" }, text);
  return el("details", { class: "error-text" }, el("summary", {}, text.slice(0, 300) + "…"),
    el("pre", {}, text));
}

export function notice(kind, ...children) {
  return el("p", { class: "notice " + kind, role: kind === "bad" ? "alert" : "status" }, ...children);
}

export function heading(text) {
  document.title = `${text} — krepis`;
  return el("h1", {}, text);
}

const PAGES = {
  "": () => import("./trail.js"),
  request: () => import("./request.js"),
  ops: () => import("./ops.js"),
  counters: () => import("./counters.js"),
  verify: () => import("./verify.js"),
};

async function start() {
  const main = document.getElementById("main");
  const page = location.pathname.slice(ROOT.length).replace(/\/$/, "");
  for (const link of document.querySelectorAll("nav.pages a")) {
    link.setAttribute("href", ROOT + link.dataset.page);
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
  }
  const load = PAGES[page] || PAGES[""];
  main.replaceChildren();
  main.setAttribute("aria-busy", "true"); // (until the page's data is shown)
  try {
    const module = await load();
    await module.render(main, new URLSearchParams(location.search));
  } catch (err) {
    main.append(notice("bad", err instanceof ApiError ? err.message : `This page failed: ${err}`));
  } finally {
    main.setAttribute("aria-busy", "false");
  }
  try {
    const { watchHeader } = await import("./verify.js");
    await watchHeader(document.getElementById("log-status"));
  } catch {
    // the header's checkpoint watch is an extra; the page itself has shown any problem
  }
}

start();
