// krepis run examples/hello.ts
/// <reference path="./krepis.d.ts" />
// Reads the kernel context, logs through the kernel, counts three ops durably.
interface Context {
  request_id: string;
  tenant_id: string;
  is_turbo_mode: boolean;
}

const ctx = Krepis.ops.op_get_context() as Context;
Krepis.ops.op_log_from_js("info", `hello from request ${ctx.request_id} (tenant ${ctx.tenant_id})`);

let total = 0;
for (let i = 0; i < 3; i++) {
  total = Krepis.ops.op_increment_stats();
}
Krepis.ops.op_log_from_js("info", `js_ops_called is now ${total}`);

// The sandbox: nothing is granted unless `krepis run --allow-read PATH`, so this throws.
try {
  Deno.readTextFileSync("/etc/hostname");
} catch (e) {
  Krepis.ops.op_log_from_js("warn", `direct file access refused: ${(e as Error).name}`);
}
// The policy answers what Deno was granted (try `--allow-read /tmp/krepis/`).
const allowed = Krepis.ops.op_check_permission("read", "/tmp/krepis/input.json");
Krepis.ops.op_log_from_js("info", `policy allows reading /tmp/krepis/input.json: ${allowed}`);
