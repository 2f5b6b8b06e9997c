// Types for editors: `/// <reference path="./krepis.d.ts" />` at the top of a script.
// (`krepis run` does not type-check; Deno strips the types.)
declare const Krepis: {
  readonly ops: {
    op_get_context(): {
      request_id: string;
      tenant_id: string;
      priority: number;
      is_turbo_mode: boolean;
      trace_id: string;
      timestamp: number;
      metadata: Record<string, unknown>;
    };
    op_log_from_js(level: "info" | "warn" | "error" | "debug", message: string): null;
    op_check_permission(permission: "read" | "write" | "net", path: string): boolean;
    op_increment_stats(): number;
    // deno-lint-ignore no-explicit-any
    [name: string]: (...args: any[]) => any;
  };
  // deno-lint-ignore no-explicit-any
  call(name: string, ...args: any[]): any;
};
