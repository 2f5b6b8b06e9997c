// krepis runtime prelude: gives the script `Krepis.ops.<name>(...)`, then imports it.
// Protocol (docs/execution-plane.md): frames of "KRP1" + u32 big-endian length + UTF-8 JSON,
// script → kernel on stdout, kernel → script on stdin. stdout belongs to the protocol, so
// console output goes to stderr.
//
// Everything the prelude needs is captured before the script runs, so a script that replaces
// JSON.stringify, TextEncoder or Error.prototype cannot make the kernel misreport its end.
const MAGIC = [0x4b, 0x52, 0x50, 0x31];
const MAX_MESSAGE = __KREPIS_MAX_MESSAGE__;
const MAX_ERROR_TEXT = __KREPIS_MAX_ERROR_TEXT__;

const enc = new TextEncoder();
const dec = new TextDecoder();
const encode = enc.encode.bind(enc);
const decode = dec.decode.bind(dec);
const stringify = JSON.stringify;
const parse = JSON.parse;
const String_ = String;
const Error_ = Error;
const ErrorPrototype = Error.prototype;
const getPrototypeOf = Object.getPrototypeOf;
const defineProperty = Object.defineProperty;
const inspect = Deno.inspect;
const exit = Deno.exit;
const writeSync = Deno.stdout.writeSync.bind(Deno.stdout);
const readSync = Deno.stdin.readSync.bind(Deno.stdin);
const setUint32 = (bytes, value) => new DataView(bytes.buffer, bytes.byteOffset, 8).setUint32(4, value);

// No storage that outlives the run or fills the disk: the Cache API writes every response to
// disk without a quota, so it is removed. (localStorage lives in the run's own DENO_DIR, which
// is deleted afterwards, and Deno caps it at 10 MB.)
for (const name of ["caches", "CacheStorage", "Cache"]) {
  try { delete globalThis[name]; } catch { /* already gone */ }
}

function send(message) {
  const body = encode(stringify(message));
  if (body.length > MAX_MESSAGE) {
    throw new RangeError(`krepis: message of ${body.length} bytes exceeds the ${MAX_MESSAGE}-byte limit`);
  }
  const frame = new Uint8Array(8 + body.length);
  frame.set(MAGIC, 0);
  setUint32(frame, body.length);
  frame.set(body, 8);
  let off = 0;
  while (off < frame.length) off += writeSync(frame.subarray(off));
}

let buf = new Uint8Array(1 << 16);
let start = 0;
let end = 0;
function fill(need) {
  if (end - start >= need) return;
  if (buf.length < need) {
    const bigger = new Uint8Array(Math.max(need, buf.length * 2));
    bigger.set(buf.subarray(start, end));
    end -= start;
    start = 0;
    buf = bigger;
  } else if (buf.length - start < need) {
    buf.copyWithin(0, start, end);
    end -= start;
    start = 0;
  }
  while (end - start < need) {
    const n = readSync(buf.subarray(end));
    if (n === null || n === 0) throw new Error_("krepis: the kernel closed the channel");
    end += n;
  }
}
function receive() {
  fill(8);
  for (let i = 0; i < 4; i++) {
    if (buf[start + i] !== MAGIC[i]) throw new Error_("krepis: malformed frame from the kernel");
  }
  const length = new DataView(buf.buffer, buf.byteOffset + start + 4, 4).getUint32(0);
  fill(8 + length);
  const body = decode(buf.subarray(start + 8, start + 8 + length));
  start += 8 + length;
  return parse(body);
}

let nextId = 1;
function call(name, args) {
  const id = nextId++;
  send({ id, op: String_(name), args });
  const reply = receive();
  if (reply.id !== id) throw new Error_(`krepis: reply ${reply.id} does not answer call ${id}`);
  if (reply.error) {
    const err = new Error_(reply.error.message);
    err.name = reply.error.name || "Error";
    throw err;
  }
  return reply.ok;
}

const ops = new Proxy(Object.create(null), {
  get(_target, name) {
    if (typeof name !== "string" || name === "then") return undefined;
    return (...args) => call(name, args);
  },
});
defineProperty(globalThis, "Krepis", {
  value: Object.freeze({ ops, call: (name, ...args) => call(name, args) }),
  enumerable: false,
});

for (const level of ["log", "info", "debug"]) console[level] = console.error;

// Reading a thrown value runs the script's code (getters, proxies, toString): every step is
// guarded, and the texts are cut, so any value becomes one well-formed "error" message.
function guard(fn, fallback) {
  try {
    const value = fn();
    return value === undefined || value === null ? fallback : value;
  } catch {
    return fallback;
  }
}
function cut(text) {
  const s = typeof text === "string" ? text : guard(() => String_(text), "");
  return s.length > MAX_ERROR_TEXT ? s.slice(0, MAX_ERROR_TEXT) + "…" : s;
}
function isError(value) {
  return guard(() => {
    for (let p = value; p !== null && (typeof p === "object" || typeof p === "function"); p = getPrototypeOf(p)) {
      if (p === ErrorPrototype) return true;
    }
    return false;
  }, false);
}
function describe(error) {
  if (isError(error)) {
    let name = cut(guard(() => error.name, "Error"));
    let message = cut(guard(() => error.message, ""));
    let stack = guard(() => error.stack, null);
    stack = typeof stack === "string" ? cut(stack) : null;
    // Deno reports a script that does not parse as a TypeError whose message is the SyntaxError.
    const syntax = /^SyntaxError: ([^\n]*)/.exec(message);
    if (name === "TypeError" && syntax) {
      name = "SyntaxError";
      const at = /\n\s+at (\S+:\d+:\d+)/.exec(message);
      stack = `SyntaxError: ${syntax[1]}` + (at ? `\n    at ${at[1]}` : "");
      message = syntax[1];
    }
    return { name, message, stack };
  }
  const shown = cut(guard(() => typeof error === "string" ? error : inspect(error), "a value that cannot be shown"));
  return { name: "Error", message: `Uncaught ${shown}`, stack: null };
}

let finished = false;
function fail(error) {
  if (finished) return;
  finished = true;
  let message;
  try {
    message = { t: "error", ...describe(error) };
  } catch {
    message = { t: "error", name: "Error", message: "the script threw a value that cannot be shown", stack: null };
  }
  try {
    send(message);
  } finally {
    exit(1);
  }
}
globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  fail(event.reason);
});
globalThis.addEventListener("error", (event) => {
  event.preventDefault();
  fail(guard(() => event.error, null) ?? guard(() => event.message, "error"));
});
globalThis.addEventListener("unload", () => {
  if (!finished) {
    finished = true;
    send({ t: "done" });
  }
});

try {
  await import(__KREPIS_SCRIPT_URL__);  // a literal, so Deno loads it as part of the graph
} catch (error) {
  fail(error);
}
