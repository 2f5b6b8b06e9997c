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
const apply = Reflect.apply;
const construct = Reflect.construct;
const Proxy_ = Proxy;
const WeakSet_ = WeakSet;
const weakAdd = WeakSet.prototype.add;
const weakHas = WeakSet.prototype.has;
const startsWith = String.prototype.startsWith;
const includes = Array.prototype.includes;
const keys = Object.keys;
const RangeErrorPrototype = RangeError.prototype;

// No storage that outlives the run or fills the disk: the Cache API writes every response to
// disk without a quota, so it is removed. (localStorage lives in the run's own DENO_DIR, which
// is deleted afterwards, and Deno caps it at 10 MB.)
for (const name of ["caches", "CacheStorage", "Cache"]) {
  try { delete globalThis[name]; } catch { /* already gone */ }
}

function send(message) {
  sendText(stringify(message));
}
function sendText(text) {
  const body = encode(text);
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

// The kernel's first frame: a token only it and this prelude know (never in a global, a
// function's source or a string the script can reach). It vouches for the one claim a script
// must not make itself: that the run failed because memory ran out (see `allocation` below).
const TOKEN = receive().token;

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

// Memory: the cap makes an allocation fail with a RangeError V8 raises. Whether an uncaught
// RangeError is that (MemoryLimit) or the script's own (`throw new RangeError("Array buffer
// allocation failed")`, a real RangeError whose message it changed) is decided here, where it
// happens: the allocating constructors and methods are wrapped, their arguments reduced to
// primitives before the allocation (so no script code runs inside it), and an error V8 raises
// there with an out-of-memory text is remembered. Only a remembered error, thrown uncaught,
// is reported as MemoryLimit (with TOKEN); any other is the RangeError it is.
const allocationFailures = new WeakSet_();
const OUT_OF_MEMORY = ["Array buffer allocation failed", "ArrayBuffer.prototype.resize: Out of memory",
  "WebAssembly.Memory(): could not allocate memory", "WebAssembly.Memory.grow(): Unable to grow"];
function allocating(fn) {
  try {
    return fn();
  } catch (error) {
    if (getPrototypeOf(error) === RangeErrorPrototype) {
      const message = error.message;  // V8's own data property: no script code has run since
      for (let i = 0; i < OUT_OF_MEMORY.length; i++) {
        if (typeof message === "string" && apply(startsWith, message, [OUT_OF_MEMORY[i]])) {
          apply(weakAdd, allocationFailures, [error]);
        }
      }
    }
    throw error;
  }
}
const primitive = (value) => value === null || (typeof value !== "object" && typeof value !== "function");
// The arguments to allocate with, if no script code can run while the built-in reads them:
// primitives, which V8 converts itself (a valueOf, a getter or an iterator would run inside).
function primitives(args) {
  for (let i = 0; i < args.length; i++) if (!primitive(args[i])) return null;
  return args;
}
function watchConstructor(owner, key, reduce) {
  const target = owner[key];
  const wrapped = new Proxy_(target, {
    construct(target, args, newTarget) {
      const plain = newTarget === wrapped ? reduce(args) : null;  // a subclass runs unwatched
      return plain === null ? construct(target, args, newTarget)
                            : allocating(() => construct(target, plain, newTarget));
    },
  });
  defineProperty(target.prototype, "constructor", { value: wrapped, writable: true, configurable: true });
  defineProperty(owner, key, { value: wrapped, writable: true, configurable: true });
}
function watchMethod(prototype, key) {
  const target = prototype[key];
  if (typeof target !== "function") return;
  defineProperty(prototype, key, {
    value: new Proxy_(target, {
      apply(target, self, args) {
        const plain = primitives(args);
        return plain === null ? apply(target, self, args) : allocating(() => apply(target, self, plain));
      },
    }),
    writable: true, configurable: true,
  });
}
// new ArrayBuffer(length[, { maxByteLength }]): the option is read here (a getter runs now).
function bufferArgs(args) {
  if (args.length > 2 || !primitive(args[0])) return null;
  const options = args[1];
  if (args.length < 2 || primitive(options)) return primitives(args);
  const max = options.maxByteLength;
  return primitive(max) ? [args[0], max === undefined ? {} : { maxByteLength: max }] : null;
}
// new WebAssembly.Memory(descriptor): a copy holding the descriptor's primitive fields.
const MEMORY_FIELDS = ["initial", "maximum", "shared", "address", "index"];
function memoryArgs(args) {
  const d = args[0];
  if (args.length !== 1 || primitive(d)) return null;
  const own = keys(d);
  for (let i = 0; i < own.length; i++) if (!apply(includes, MEMORY_FIELDS, [own[i]])) return null;
  const copy = { __proto__: null };
  for (let i = 0; i < MEMORY_FIELDS.length; i++) {
    const value = d[MEMORY_FIELDS[i]];
    if (!primitive(value)) return null;
    if (value !== undefined) copy[MEMORY_FIELDS[i]] = value;
  }
  return [copy];
}
for (const name of ["ArrayBuffer", "SharedArrayBuffer"]) {
  if (typeof globalThis[name] === "function") watchConstructor(globalThis, name, bufferArgs);
}
for (const name of ["Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array",
  "Uint32Array", "Float16Array", "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array"]) {
  if (typeof globalThis[name] === "function") watchConstructor(globalThis, name, primitives);
}
for (const key of ["resize", "transfer", "transferToFixedLength"]) watchMethod(ArrayBuffer.prototype, key);
if (typeof SharedArrayBuffer === "function") watchMethod(SharedArrayBuffer.prototype, "grow");
if (typeof WebAssembly === "object" && typeof WebAssembly.Memory === "function") {
  watchConstructor(WebAssembly, "Memory", memoryArgs);
  watchMethod(WebAssembly.Memory.prototype, "grow");
}

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
    if (apply(weakHas, allocationFailures, [error])) {
      sendText('{"t":"memory","token":' + stringify(TOKEN) + "}");  // a primitive: no toJSON runs
    }
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
