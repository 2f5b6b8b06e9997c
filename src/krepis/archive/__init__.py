"""The journal's cold storage: whole bundles of 256 entries moved out of the live store into a
directory of zstd-compressed, verifiable segment files (format: ``docs/archive.md``).

Guarantees:

* **Whole bundles, in append order.** Bundle ``k`` of a log is its leaves ``256k … 256k+255``
  (``seq = first_seq + leaf``); it decompresses to exactly the C2SP entry bundle
  ``tile/entries/k`` that ``krepis tlog export`` writes, and its Merkle hash is checked against
  the tree's stored height-8 node before it is written.
* **Durable before removed.** A segment file and then the manifest naming it are written,
  fsynced and renamed into place (the directory fsynced too) before the store removes a single
  entry; a crash at any point leaves every entry readable exactly once (reads take seqs below
  the store's live first seq from the archive, the rest from the store), and the next run
  completes the work.
* **Counters and the tree are untouched**: the stored tree nodes keep proofs and checkpoints of
  every entry working; proofs of archived entries read their leaves from the archive.

The archive works on the storage port and the tree (``tlog``), never on the journal class.
"""

from __future__ import annotations

from ._format import RETENTION_MIN_BUNDLES, bundle_hash, bundle_of, split_bundle
from ._manifest import MANIFEST
from ._policy import ArchiveReport, ArchiveVerifyReport, RetentionPolicy, parse_before
from ._reader import ArchiveReader
from ._verify import verify_archive
from ._writer import archive_store

__all__ = ["MANIFEST", "RETENTION_MIN_BUNDLES", "ArchiveReader", "ArchiveReport", "ArchiveVerifyReport",
           "RetentionPolicy", "archive_store", "bundle_hash", "bundle_of", "parse_before", "split_bundle",
           "verify_archive"]
