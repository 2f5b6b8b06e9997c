"""Running code you do not trust: narrow grants, limits, and what a failure looks like.

    python examples/untrusted.py
    krepis logs --op kernel_error
"""

from krepis import Kernel, PermissionPolicy, ScriptError

# The script may read /tmp/krepis-inbox/ and nothing else; it can import only itself.
kernel = Kernel(".krepis/storage", permissions=PermissionPolicy(read=["/tmp/krepis-inbox/"]))

ATTEMPTS = {
    "read a secret through an import": 'import s from "/etc/passwd" with { type: "text" }; console.log(s);',
    "read the host's environment": "console.log(Deno.env.get('PGPASSWORD'));",
    "allocate 8 GiB": "const b = new Uint8Array(8 * 2 ** 30); b.fill(1);",
    "loop forever": "for (;;) {}",
    "flood the journal": "for (;;) Krepis.ops.op_increment_stats();",
}

if __name__ == "__main__":
    with kernel:
        for what, source in ATTEMPTS.items():
            try:
                kernel.run_script(source, timeout=2, memory_limit_mb=128, max_ops=100)
                print(f"{what}: ran")
            except ScriptError as exc:  # each failure is journaled as kernel_error, once
                print(f"{what}: [{exc.name}] {str(exc)[:100]}")
