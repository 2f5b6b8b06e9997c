"""Changing a store behind krepis's back, as another tool or an attacker would."""

from __future__ import annotations

import os
from pathlib import Path


def forget_commit_log(store: str | os.PathLike[str]) -> None:
    """After writing ``data.mdb`` directly with LMDB: remove ``commit.log``, whose checkpoint no
    longer describes the file. Otherwise the next open, finding data.mdb past its checkpoint,
    would recover (write the checkpoint's meta pages back), undoing the direct change; without
    a log, krepis takes data.mdb as it is, which is what these tests examine."""
    Path(store, "commit.log").unlink(missing_ok=True)
