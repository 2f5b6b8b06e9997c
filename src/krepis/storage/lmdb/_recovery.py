"""Recovery after a crash: the commit log read back, checked, and applied to LMDB.

**Recovery** (the first process to open the store after every other closed or died, before it
writes anything): walk the chain of records from LMDB's pointer. The first missing, torn or
out-of-chain record ends it — unless something proves the log was durable past that point (the
marker, or a valid record further on that says so), in which case the log is damaged and the open
is refused, naming the position, with both files as they were. Then the chain's records are
applied to LMDB (synced), and the head is set to the end of the chain.
"""

from __future__ import annotations

import lmdb

from ..._errors import CorruptStorageError
from ._apply import apply_records
from ._catchup import to_tail_record
from ._commitlog import BARRIER, LOG
from ._layout import _wrap
from ._state import Shared, read_log_pointer, read_seq
from ._tail import TailRecord

__all__ = ["recover"]


def recover(shared: Shared) -> int:
    """Recovery, with the writer lock held and no other process: apply the records that follow
    LMDB's pointer. Everything is checked before the first write. Returns the records applied."""
    path, log = shared.path, shared.log
    with shared.env.begin() as txn:
        pointer = read_log_pointer(txn, shared.meta, path)
    chain = list(log.chain(pointer.position, pointer.link))
    end = chain[-1].end if chain else pointer.position
    durable, found = log.durable_evidence(end)  # (everything is read before anything is written)
    if durable > end:
        raise CorruptStorageError(
            f"storage at {path}: {LOG} has no valid record at position {end}, where data.mdb and the "
            f"log's readable records end, but the log was durable up to position {durable}"
            + (f" ({found} valid record(s) lie beyond)" if found else "")
            + ": acknowledged writes are damaged or missing (or data.mdb is older than its log). "
            "Nothing was written; restore the store from a backup", path)
    records = [to_tail_record(r, path) for r in chain]  # (every record decodes before any applies)
    for record in records:
        if record.kind == BARRIER:
            raise CorruptStorageError(
                f"storage at {path}: the commit log holds, at position {record.position}, a change made "
                "outside the log (a clear, an archive or a checkpoint) that data.mdb does not have: "
                "data.mdb is older than its commit log. Restore the store with krepis restore", path)
    at = 0
    while at < len(records):
        batch: list[TailRecord] = []
        count = 0
        while at < len(records) and (not batch or count < 65536):
            batch.append(records[at])
            count += len(records[at].entries)
            at += 1
        try:
            with shared.env.begin(write=True) as txn:
                current = read_log_pointer(txn, shared.meta, path)
                pointer, new_ops = apply_records(shared, txn, batch, current)
        except lmdb.Error as exc:
            raise _wrap(exc, path, "recovering from the commit log") from exc
        shared.op_ids.update(new_ops)
        shared.op_names.update((i, n) for n, i in new_ops.items())
    with shared.env.begin() as txn:
        seq = read_seq(txn, shared.meta, path)
    shared.tail.reset(end, chain[-1].crc if chain else pointer.link, seq)
    shared.floor = end
    shared.durable = end
    log.reset_state(shared.files.dir_fd, end)
    return len(records)

