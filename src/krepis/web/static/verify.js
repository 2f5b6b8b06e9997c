// Verify: the latest signed checkpoint, checked in this browser against the verifier key the
// visitor pinned; every checkpoint seen is kept here and each new one must be proven to extend
// it (a server that rewrites or forks its history is caught); and any entry checked against the
// checkpoint: its bytes' leaf hash and audit path must lead to the signed root.
import { ROOT, ApiError, api, el, heading, href, notice } from "./app.js";
import {
  VerifyError, b64decode, b64encode, cryptoAvailable, equal, leafHash, openCheckpoint, parseVerifierKey,
  proofPath, rootFromInclusion, verifyConsistency,
} from "./tlog.js";

const KEY = "krepis.vkey";
const SEEN = "krepis.seen:";

function pinned() {
  return localStorage.getItem(KEY);
}

function seenFor(key) {
  try {
    const value = JSON.parse(localStorage.getItem(SEEN + key.text) || "null");
    return value && typeof value.size === "string" && typeof value.root === "string" ? value : null;
  } catch {
    return null;
  }
}

function remember(key, cp, first) {
  localStorage.setItem(SEEN + key.text, JSON.stringify({
    size: String(cp.size), root: b64encode(cp.root), note: cp.note, first: String(first), at: new Date().toISOString(),
  }));
}

// The sequence number of the log's first entry, as the server says (checked against the one this
// browser kept with the log's checkpoint: entry #N is leaf N − first of the signed tree).
async function firstSeq() {
  const counters = await api("counters", {});
  const first = counters && counters.tree ? counters.tree.first_seq : undefined;
  if (typeof first !== "number" || !Number.isSafeInteger(first) || first < 0) {
    throw new VerifyError("the server did not say where the log's entries begin (tree.first_seq)");
  }
  return BigInt(first);
}

// The latest checkpoint, opened with the pinned key, and checked against the one this browser
// kept: { ok: true | false, reason, cp, seen, first }. `first` is the log's first seq, kept with
// the checkpoint the first time and required to stay the same (a server that renumbers the
// log's entries is caught like one that rewrites them). Entries are verified only against the
// `cp` of a result with ok === true — never against a checkpoint fetched again.
export async function checkLog(key) {
  let note;
  try {
    note = await api("checkpoint", {}, "text");
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return { ok: null, reason: err.message };
    throw err;
  }
  let cp;
  try {
    cp = await openCheckpoint(note, key);
  } catch (err) {
    if (err instanceof VerifyError) return { ok: false, reason: `the latest checkpoint does not verify: ${err.message}`, note };
    throw err;
  }
  let first;
  try {
    first = await firstSeq();
  } catch (err) {
    return { ok: false, cp, reason: err.message };
  }
  const seen = seenFor(key);
  if (seen === null) {
    remember(key, cp, first);
    return { ok: true, cp, first, reason: `checkpoint of ${cp.size} entries verified; it is the first this browser keeps for ${key.name}` };
  }
  const seenSize = BigInt(seen.size);
  const seenRoot = b64decode(seen.root, "the kept root");
  const split = (why) => ({ ok: false, split: true, cp, seen, reason: why });
  if (typeof seen.first === "string" && BigInt(seen.first) !== first) {
    return split(`split view: the server now numbers this log's entries from seq ${first}; this browser saw them numbered from seq ${seen.first}`);
  }
  if (seenSize === cp.size) {
    if (equal(seenRoot, cp.root)) {
      if (typeof seen.first !== "string") remember(key, cp, first); // (kept before the first seq was)
      return { ok: true, cp, seen, first, reason: `checkpoint of ${cp.size} entries verified; the same tree this browser saw before` };
    }
    return split(`split view: the server signs a tree of ${cp.size} entries with another root than the one this browser saw — two histories under one key`);
  }
  if (seenSize > cp.size) {
    return split(`split view or rollback: this browser saw a checkpoint of ${seenSize} entries; the server now shows ${cp.size}`);
  }
  let proof;
  try {
    const answer = await api("proof/consistency", { old: String(seenSize), new: String(cp.size) });
    proof = proofPath(answer.path, "the consistency proof");
  } catch (err) {
    return split(`the server could not prove that today's tree extends the one this browser saw (${err.message})`);
  }
  if (await verifyConsistency(seenSize, cp.size, seenRoot, cp.root, proof)) {
    remember(key, cp, first);
    return { ok: true, cp, seen, first, reason: `checkpoint of ${cp.size} entries verified; proven to extend the ${seenSize} entries this browser saw before` };
  }
  return split(`split view: the tree of ${cp.size} entries does not extend the tree of ${seenSize} entries this browser saw — the history was rewritten`);
}

async function pinnedKey() {
  const text = pinned();
  if (!text) return null;
  return parseVerifierKey(text);
}

export async function watchHeader(span) {
  if (!span || !cryptoAvailable() || location.pathname === ROOT + "verify") return;
  const key = await pinnedKey().catch(() => null);
  if (!key) return;
  const result = await checkLog(key);
  if (result.ok === true) {
    span.replaceChildren(el("a", { href: href("verify", {}), title: result.reason }, `log ✓ ${result.cp.size} entries`));
  } else if (result.ok === false) {
    span.replaceChildren(el("a", { href: href("verify", {}), class: "bad", title: result.reason }, "⚠ log check failed"));
  }
}

function verdict(ok, text) {
  return el("p", { class: "verdict " + (ok ? "good" : "bad"), role: "status" }, (ok ? "✓ " : "✗ ") + text);
}

function keySection(main, key, keyError) {
  const input = el("input", { type: "text", id: "vkey", name: "vkey", value: pinned() || "", autocomplete: "off", spellcheck: "false",
    placeholder: "example.com/journal+1a2b3c4d+AQ…", "aria-describedby": "vkey-help" });
  const message = el("div", { role: "status" });
  const form = el("form", { class: "filters", id: "key-form", "aria-label": "The log's verifier key" },
    el("label", {}, "The log's verifier key (krepis keygen prints it)", input),
    el("button", { type: "submit" }, "Pin key"),
    el("button", { type: "button", class: "secondary", onclick: () => { localStorage.removeItem(KEY); location.reload(); } }, "Forget"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await parseVerifierKey(input.value);
      localStorage.setItem(KEY, input.value.trim());
      location.reload();
    } catch (err) {
      message.replaceChildren(notice("bad", `Not pinned: ${err.message}`));
    }
  });
  main.append(el("h2", {}, "Verifier key"),
    el("p", { id: "vkey-help", class: "muted" }, "Pinned in this browser only. Checks below trust this key and nothing the server says."),
    form, message);
  if (keyError) message.append(notice("bad", `The pinned key is not usable: ${keyError}`));
  else if (key) message.append(el("p", {}, "Pinned: ", el("code", {}, key.name), ` (key ID ${Array.from(key.id, (b) => b.toString(16).padStart(2, "0")).join("")})`));
}

function checkpointSection(main, result) {
  main.append(el("h2", {}, "Latest checkpoint"));
  const box = el("div", { id: "log-check" });
  main.append(box);
  if (result.ok === null) {
    box.append(notice("", result.reason));
    return;
  }
  box.append(verdict(result.ok, result.reason));
  if (result.cp) {
    box.append(el("dl", { class: "facts" },
      el("dt", {}, "Origin"), el("dd", { class: "mono", id: "cp-origin" }, result.cp.origin),
      el("dt", {}, "Tree size"), el("dd", { id: "cp-size" }, String(result.cp.size)),
      el("dt", {}, "Root hash"), el("dd", { class: "mono" }, b64encode(result.cp.root))));
  }
  if (result.split) {
    box.append(notice("bad", "Keep both signed notes below: together they prove the log's key signed two histories."),
      el("h3", {}, "The checkpoint this browser kept"), el("pre", {}, result.seen.note),
      el("h3", {}, "The checkpoint the server shows now"), el("pre", {}, result.cp.note),
      el("button", { type: "button", class: "secondary", onclick: () => { localStorage.removeItem(SEEN + pinned()); location.reload(); } },
        "Forget the kept checkpoint (trust the server's new history)"));
  } else if (result.note) {
    box.append(el("pre", {}, result.note));
  }
}

// Entry `seq` against the checkpoint `log` (checkLog's result) verified: its leaf is leaf
// seq − first of that signed tree — the index the page computes, never the server's.
async function verifyEntry(log, seq, out) {
  const steps = el("ol", { class: "steps" });
  const step = (ok, text) => steps.append(el("li", { class: ok ? "good" : "bad" }, (ok ? "✓ " : "✗ ") + text));
  out.replaceChildren(el("h3", {}, `Entry #${seq}`), steps);
  if (log.ok !== true) {
    throw new VerifyError(`no entry can be verified: the log's checkpoint is not trusted in this browser (${log.reason})`);
  }
  const { cp, first } = log;
  step(true, `checkpoint signed by ${cp.origin}: ${cp.size} entries, checked above`);
  const index = BigInt(seq) - first;
  if (index < 0n || index >= cp.size) {
    throw new VerifyError(`entry #${seq} is not covered by the signed checkpoint (it covers seqs ${first}…${first + cp.size - 1n})`);
  }
  const bytes = await api("leaf", { seq }, "bytes");
  let proof;
  try {
    proof = await api("proof/inclusion", { seq, size: String(cp.size) });
  } catch (err) {
    throw new VerifyError(`no inclusion proof in the signed tree: ${err.message}`);
  }
  if (typeof proof.index !== "number" || !Number.isSafeInteger(proof.index) || BigInt(proof.index) !== index) {
    throw new VerifyError(`the server's proof is not for entry #${seq}, which is leaf ${index} of this log (its entries begin at seq ${first})`);
  }
  const path = proofPath(proof.path, "the inclusion proof");
  const leaf = await leafHash(bytes);
  step(true, `leaf hash of the entry's ${bytes.length} bytes computed`);
  const root = await rootFromInclusion(leaf, index, cp.size, path);
  if (!equal(root, cp.root)) throw new VerifyError("the audit path does not lead to the checkpoint's root: the entry, the proof or the checkpoint was altered");
  step(true, `audit path of ${path.length} hashes leads to the signed root as leaf ${index}`);
  let entry;
  try {
    entry = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch {
    throw new VerifyError("the verified bytes are not an entry (not UTF-8 JSON)");
  }
  out.append(verdict(true, `entry #${seq} is leaf ${index} of the signed tree of ${cp.size} entries`),
    el("p", { class: "muted" }, "What the verified bytes say:"),
    el("dl", { class: "facts", id: "verified-entry" }, ...Object.entries(entry).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))])),
    el("details", {}, el("summary", {}, "The bytes, as hashed"), el("pre", {}, new TextDecoder().decode(bytes))));
}

export async function render(main, params) {
  main.append(heading("Verify"));
  if (!cryptoAvailable()) {
    main.append(notice("bad", "This browser cannot verify here: the page is not in a secure context (open the console over HTTPS, or " +
      "on this machine as http://127.0.0.1…), so WebCrypto is not available."));
    return;
  }
  let key = null;
  let keyError = null;
  try {
    key = await pinnedKey();
  } catch (err) {
    keyError = err.message;
  }
  keySection(main, key, keyError);
  if (!key) {
    main.append(notice("", "Pin the log's verifier key to check its checkpoint and entries in this browser."));
    return;
  }
  const log = await checkLog(key);
  checkpointSection(main, log);
  const seqInput = el("input", { type: "number", id: "seq", name: "seq", min: "0", value: params.get("seq") || "", required: true });
  main.append(el("h2", {}, "Verify an entry"), el("form", { class: "filters", method: "get", action: ROOT + "verify", "aria-label": "Verify an entry" },
    el("label", {}, "Sequence number", seqInput), el("button", { type: "submit" }, "Verify in this browser")));
  const out = el("div", { id: "entry-check", "aria-live": "polite" });
  main.append(out);
  const seq = params.get("seq");
  if (seq !== null && /^[0-9]{1,18}$/.test(seq)) {
    try {
      await verifyEntry(log, seq, out);
    } catch (err) {
      out.append(verdict(false, err instanceof VerifyError || err instanceof ApiError ? err.message : `verification failed: ${err}`));
    }
    out.append(el("p", {}, el("a", { href: href("", {}) }, "Back to the trail")));
  }
}
