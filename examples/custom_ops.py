"""Python ops called from JavaScript, every call journaled.

    python examples/custom_ops.py
    krepis logs --op charge
"""

from krepis import Kernel

kernel = Kernel(".krepis/storage", tenant_id="shop")


@kernel.op("charge")
def charge(customer: str, cents: int) -> dict[str, object]:
    if cents <= 0:
        raise ValueError(f"amount must be positive, got {cents}")
    return {"customer": customer, "charged": cents, "currency": "EUR"}


SCRIPT = """
const receipt = Krepis.ops.charge("alice", 1250);
Krepis.ops.op_log_from_js("info", `charged ${receipt.customer} ${receipt.charged} ${receipt.currency}`);
try {
  Krepis.ops.charge("bob", -5);
} catch (e) {
  Krepis.ops.op_log_from_js("warn", `refused: ${e.message}`);   // the Python ValueError
}
"""

if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s: %(message)s")
    with kernel:
        result = kernel.run_script(SCRIPT, timeout=30)
        print(f"{result.ops_called} op calls; counters: {kernel.journal.op_counts()}")
