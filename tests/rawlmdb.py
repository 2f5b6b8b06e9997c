"""Changing a store behind krepis's back, as another tool or an attacker would."""

from __future__ import annotations

import os
from pathlib import Path


def forget_commit_log(store: str | os.PathLike[str]) -> None:
    """After writing ``data.mdb`` directly with LMDB (the store closed cleanly before, so its
    log holds nothing LMDB lacks): remove ``commit.log`` and ``commit.state``, so the next open
    makes a new, empty log for data.mdb as it is, which is what these tests examine."""
    Path(store, "commit.log").unlink(missing_ok=True)
    Path(store, "commit.state").unlink(missing_ok=True)


def needed_size(data: Path) -> int:
    """The shortest length ``data.mdb`` can have: the pages past it are all on LMDB's free list
    (LMDB never reads those, so a file without them is not damaged)."""
    from krepis.storage.lmdb._files import _META, _PAGE_HEADER, _tail_is_free

    raw = data.read_bytes()
    offset = max((0, 4096), key=lambda off: _META.unpack_from(raw, off + _PAGE_HEADER)[4])
    psize, last_pg = _META.unpack_from(raw, offset + _PAGE_HEADER)[2:4]
    root = raw[offset + _PAGE_HEADER + 64:offset + _PAGE_HEADER + 72]
    size = min(len(raw), (last_pg + 1) * psize)
    fd = os.open(data, os.O_RDONLY)
    try:
        while size > 2 * psize and _tail_is_free(fd, psize, root, size - psize, last_pg):
            size -= psize
    finally:
        os.close(fd)
    return int(size)


def edit(store: str | os.PathLike[str], change) -> None:  # type: ignore[no-untyped-def]
    """Change a store with LMDB itself, in one write transaction: ``change(txn, db)``, where
    ``db(name, **flags)`` opens one of its named databases. Then forget the commit log (above)."""
    import lmdb

    env = lmdb.open(str(store), max_dbs=16)
    try:
        with env.begin(write=True) as txn:
            change(txn, lambda name, **flags: env.open_db(name, txn=txn, create=False, **flags))
    finally:
        env.close()
    forget_commit_log(store)
