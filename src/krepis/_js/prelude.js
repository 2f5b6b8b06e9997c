// krepis runtime prelude: gives the script `Krepis.ops.<name>(...)`, then imports it.
// Protocol (docs/execution-plane.md): frames of "KRP1" + u32 big-endian length + UTF-8 JSON,
// script → kernel on stdout, kernel → script on stdin. stdout belongs to the protocol, so
// console output goes to stderr.
const MAGIC = [0x4b, 0x52, 0x50, 0x31];
const MAX_MESSAGE = __KREPIS_MAX_MESSAGE__;
const enc = new TextEncoder();
const dec = new TextDecoder();
const out = Deno.stdout;
const inp = Deno.stdin;
const writeSync = out.writeSync.bind(out);
const readSync = inp.readSync.bind(inp);

function send(message) {
  const body = enc.encode(JSON.stringify(message));
  if (body.length > MAX_MESSAGE) {
    throw new RangeError(`krepis: message of ${body.length} bytes exceeds the ${MAX_MESSAGE}-byte limit`);
  }
  const frame = new Uint8Array(8 + body.length);
  frame.set(MAGIC, 0);
  new DataView(frame.buffer).setUint32(4, body.length);
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
    if (n === null || n === 0) throw new Error("krepis: the kernel closed the channel");
    end += n;
  }
}
function receive() {
  fill(8);
  for (let i = 0; i < 4; i++) {
    if (buf[start + i] !== MAGIC[i]) throw new Error("krepis: malformed frame from the kernel");
  }
  const length = new DataView(buf.buffer, buf.byteOffset + start + 4, 4).getUint32(0);
  fill(8 + length);
  const body = dec.decode(buf.subarray(start + 8, start + 8 + length));
  start += 8 + length;
  return JSON.parse(body);
}

let nextId = 1;
function call(name, args) {
  const id = nextId++;
  send({ id, op: String(name), args });
  const reply = receive();
  if (reply.id !== id) throw new Error(`krepis: reply ${reply.id} does not answer call ${id}`);
  if (reply.error) {
    const err = new Error(reply.error.message);
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
Object.defineProperty(globalThis, "Krepis", {
  value: Object.freeze({ ops, call: (name, ...args) => call(name, args) }),
  enumerable: false,
});

for (const level of ["log", "info", "debug"]) console[level] = console.error;

let finished = false;
function fail(error) {
  if (finished) return;
  finished = true;
  const e = error instanceof Error ? error : null;
  try {
    send({
      t: "error",
      name: e ? e.name : "Error",
      message: e ? e.message : `Uncaught ${typeof error === "string" ? error : Deno.inspect(error)}`,
      stack: e && e.stack ? String(e.stack) : null,
    });
  } finally {
    Deno.exit(1);
  }
}
globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  fail(event.reason);
});
globalThis.addEventListener("error", (event) => {
  event.preventDefault();
  fail(event.error ?? event.message);
});
globalThis.addEventListener("unload", () => {
  if (!finished) {
    finished = true;
    send({ t: "done" });
  }
});

try {
  await import(__KREPIS_SCRIPT_URL__);
} catch (error) {
  fail(error);
}
