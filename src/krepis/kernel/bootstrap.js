// The built-in workload of `krepis run`: the spec's bootstrap, through kernel ops only.
const ctx = Krepis.ops.op_get_context();
Krepis.ops.op_log_from_js("info", `bootstrap: request ${ctx.request_id}, tenant ${ctx.tenant_id}`);
let count = 0;
for (let i = 0; i < 3; i++) {
  count = Krepis.ops.op_increment_stats();
}
const path = "/tmp/krepis/config.json";
const allowed = Krepis.ops.op_check_permission("read", path);
Krepis.ops.op_log_from_js("info", `js_ops_called=${count}; read ${path}: ${allowed ? "allowed" : "denied"}`);
