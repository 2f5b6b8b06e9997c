// Counters: the persistent op counters (the kernel's stats among them) and what the store holds.
import { el, exactOp, formatCount, heading, href, timeCell } from "./app.js";
import { api } from "./app.js";

export async function render(main) {
  main.append(heading("Counters"));
  const data = await api("counters");
  main.append(el("h2", {}, "Kernel"), el("div", { class: "cards" },
    ...Object.entries(data.kernel).map(([name, value]) => el("div", { class: "card", id: "kernel-" + name.replace(/_/g, "-") },
      el("div", { class: "value" }, formatCount(value)), el("div", { class: "label" }, name)))));
  main.append(el("h2", {}, "Every counter"));
  if (!data.counters.length) main.append(el("p", { class: "muted" }, "No counter yet."));
  else {
    main.append(el("div", { class: "table-scroll" }, el("table", { id: "counters-table" },
      el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Counter"), el("th", { scope: "col", class: "num" }, "Value"))),
      el("tbody", {}, data.counters.map((c) => el("tr", {},
        el("th", { scope: "row" }, el("a", { href: href("", { op: exactOp(c.name) }) }, c.name)),
        el("td", { class: "num" }, formatCount(c.value))))))));
  }
  const entries = data.entries || {};
  main.append(el("h2", {}, "The store"), el("dl", { class: "facts" },
    el("dt", {}, "Location"), el("dd", { class: "mono" }, data.location),
    el("dt", {}, "Entries"), el("dd", {}, formatCount(data.journal_count) +
      (entries.archived ? ` (${formatCount(entries.live)} live, ${formatCount(entries.archived)} archived)` : "")),
    el("dt", {}, "Archive"), el("dd", { class: "mono" }, data.archive || "none"),
    el("dt", {}, "Next sequence number"), el("dd", {}, formatCount(data.next_seq)),
    el("dt", {}, "Merkle tree"), el("dd", {}, `${formatCount(data.tree.size)} leaves, first seq ${formatCount(data.tree.first_seq)}, log ${data.tree.epoch}`),
    el("dt", {}, "Tree head"), el("dd", { class: "mono" }, data.tree.root),
    el("dt", {}, "Read at"), el("dd", {}, timeCell(data.now))));
}
