"""Only running out of memory is a MemoryLimit: a script that prints V8's out-of-memory text
and exits, or throws (or reshapes) a RangeError that reads like an allocation failure, or
forges the prelude's frame, is reported as the ordinary failure it is."""

from __future__ import annotations

import io
import json
import signal
from pathlib import Path

import pytest

from krepis import Kernel, SovereignJournal
from krepis.kernel import ScriptError

FRAME_JS = """
const frame = (message) => {
  const body = new TextEncoder().encode(JSON.stringify(message));
  const f = new Uint8Array(8 + body.length);
  f.set([0x4b, 0x52, 0x50, 0x31]);
  new DataView(f.buffer).setUint32(4, body.length);
  f.set(body, 8);
  return f;
};
"""

MARKERS = ["\n\n#\n# Fatal JavaScript out of memory: Reached heap limit\n#\n",
           "memory allocation of 1073741824 bytes failed\n",
           "Fatal process out of memory: Zone\n",
           "RangeError: Array buffer allocation failed\n"]

FORGED = {
    **{f"stderr-{i}-exit-{code}": (f"Deno.stderr.writeSync(new TextEncoder().encode({json.dumps(m)}));"
                                   f" Deno.exit({code});")
       for i, m in enumerate(MARKERS) for code in (1, 128 + signal.SIGTRAP, 128 + signal.SIGABRT)},
    "console-marker-throw": "console.error('# Fatal JavaScript out of memory: Reached heap limit'); "
                            "throw new Error('x');",
    "throw-rangeerror": "throw new RangeError('Array buffer allocation failed');",
    "reject-rangeerror": "await Promise.reject(new RangeError('Array buffer allocation failed'));",
    "throw-wasm-text": "throw new RangeError('WebAssembly.Memory(): could not allocate memory');",
    "reshaped-genuine-rangeerror": "try { new ArrayBuffer(-1); } catch (e) { "
                                   "e.message = 'Array buffer allocation failed'; throw e; }",
    "valueof-inside-constructor": "new ArrayBuffer({ valueOf() { throw new RangeError("
                                  "'Array buffer allocation failed'); } });",
    "iterable-inside-typed-array": "new Uint8Array({ length: 3, get 0() { throw new RangeError("
                                   "'Array buffer allocation failed'); } });",
    "option-getter": "new ArrayBuffer(8, { get maxByteLength() { throw new RangeError("
                     "'Array buffer allocation failed'); } });",
    "hostile-new-target": "Reflect.construct(Uint8Array, [8], new Proxy(function () {}, { get() { "
                          "throw new RangeError('Array buffer allocation failed'); } }));",
    "subclass": "class X extends Uint8Array { constructor() { super(1); "
                "throw new RangeError('Array buffer allocation failed'); } } new X();",
    "wasm-descriptor-getter": "new WebAssembly.Memory({ get initial() { throw new RangeError("
                              "'WebAssembly.Memory(): could not allocate memory'); } });",
    "grow-valueof": "new WebAssembly.Memory({ initial: 1 }).grow({ valueOf() { throw new RangeError("
                    "'WebAssembly.Memory.grow(): Unable to grow'); } });",
    "patched-weakset": "WeakSet.prototype.has = () => true; WeakSet.prototype.add = () => {}; "
                       "throw new RangeError('Array buffer allocation failed');",
    "patched-startswith": "String.prototype.startsWith = () => true; new Array(-1);",
    "forged-memory-frame": FRAME_JS + "Deno.stdout.writeSync(frame({ t: 'memory', token: 'a'.repeat(32) })); "
                           "throw new RangeError('Array buffer allocation failed');",
    "forged-non-ascii-token": FRAME_JS + "Deno.stdout.writeSync(frame({ t: 'memory', "
                              "token: 'ü'.repeat(32) })); "
                              "throw new RangeError('Array buffer allocation failed');",
    "forged-error-frame": FRAME_JS + "Deno.stdout.writeSync(frame({ t: 'error', name: 'MemoryLimit', "
                          "message: 'x' })); Deno.exit(1);",
}


def fails(store: Path, source: str, **limits: object) -> ScriptError:
    with Kernel(store) as kernel, pytest.raises(ScriptError) as info:
        kernel.run_script(source, stderr=io.BytesIO(), **limits)  # type: ignore[arg-type]
    with SovereignJournal(store) as journal:
        errors = [e.error or "" for e in journal.query(newest_first=False) if e.op_name == "kernel_error"]
    assert len(errors) == 1
    assert errors[0].startswith("MemoryLimit:") == (info.value.name == "MemoryLimit"), errors
    return info.value


@pytest.mark.parametrize("name", list(FORGED))
def test_a_forged_memory_limit_is_an_ordinary_failure(store: Path, name: str) -> None:
    error = fails(store, FORGED[name], memory_limit_mb=64, timeout=60)
    assert error.name != "MemoryLimit", (name, str(error))
    assert "memory limit of" not in str(error)
    if name.startswith("stderr-"):
        assert error.name == "DenoExited" and "exited with code" in str(error)


GENUINE = {
    "typed-array-at-the-cap": "const a = []; for (;;) { const b = new Uint8Array(32 << 20); b.fill(1); "
                              "a.push(b); }",
    "buffer-over-the-cap": "new ArrayBuffer(8 * 2 ** 30);",
    "rejected-in-a-promise": "await (async () => { new Float64Array(2 ** 30); })();",
    "slice-at-the-cap": "const a = []; const b = new Uint8Array(32 << 20); "
                        "for (;;) a.push(b.slice().fill(1));",
    "resize": "const b = new ArrayBuffer(8, { maxByteLength: 2 ** 33 }); b.resize(2 ** 33);",
    "v8-heap": "const a = []; for (;;) a.push({ x: Math.random(), y: 'k' + Math.random() });",
}


@pytest.mark.parametrize("name", list(GENUINE))
def test_running_out_of_memory_is_still_a_memory_limit(store: Path, name: str) -> None:
    error = fails(store, GENUINE[name], memory_limit_mb=64, timeout=120)
    assert error.name == "MemoryLimit", (name, str(error))
    assert "memory limit of 64 MiB" in str(error)


def test_the_watched_constructors_behave_as_the_built_ins(store: Path) -> None:
    """Wrapping the allocating built-ins changes nothing a script can rely on."""
    source = """
        const checks = {
          ctor: new Uint8Array(4).constructor === Uint8Array
                && new ArrayBuffer(1).constructor === ArrayBuffer,
          instance: new Uint8Array(4) instanceof Uint8Array && new ArrayBuffer(2) instanceof ArrayBuffer,
          native: Function.prototype.toString.call(Uint8Array).includes("[native code]"),
          names: Uint8Array.name === "Uint8Array" && ArrayBuffer.length === 1,
          statics: Uint8Array.BYTES_PER_ELEMENT === 1 && ArrayBuffer.isView(new Uint8Array(1))
                   && Uint8Array.from([1, 2]).length === 2 && Uint8Array.of(1).length === 1,
          proto: Object.getPrototypeOf(Uint8Array) === Object.getPrototypeOf(Int8Array),
          subclass: (() => { class X extends Uint8Array { y() { return 7; } } const x = new X(2);
                             return x.y() === 7 && x.length === 2 && x instanceof Uint8Array; })(),
          species: new Uint8Array([1, 2, 3]).slice(1).constructor === Uint8Array,
          coerced: new Uint8Array("3").length === 3 && new ArrayBuffer({ valueOf: () => 5 }).byteLength === 5,
          options: new ArrayBuffer(2, { maxByteLength: 8 }).resizable && !new ArrayBuffer(2, {}).resizable,
          transfer: new ArrayBuffer(6).transfer().byteLength === 6
                    && new ArrayBuffer(6).transfer(2).byteLength === 2,
          wasm: new WebAssembly.Memory({ initial: 1, maximum: 2 }).grow(1) === 1,
          errors: (() => { try { new Uint8Array(-1); } catch (e) { return e instanceof RangeError; } })(),
          noNew: (() => { try { Uint8Array(1); } catch (e) { return e instanceof TypeError; } })(),
        };
        Krepis.ops.report(checks);
    """
    kernel = Kernel(store)
    seen: list[object] = []
    kernel.op("report")(seen.append)
    with kernel:
        kernel.run_script(source, stderr=io.BytesIO())
    (checks,) = seen
    assert isinstance(checks, dict) and {k for k, ok in checks.items() if ok is not True} == set(), checks


def test_a_caught_allocation_failure_does_not_end_the_run(store: Path) -> None:
    kernel = Kernel(store)
    seen: list[object] = []
    kernel.op("report")(seen.append)
    with kernel:
        kernel.run_script("try { new ArrayBuffer(8 * 2 ** 30); } catch (e) { Krepis.ops.report(e.message); }",
                          memory_limit_mb=64, stderr=io.BytesIO())
    assert seen == ["Array buffer allocation failed"]
