"""Checking a krepis journal's Merkle tree from public data only (RFC 6962 / RFC 9162).

A verifier needs no access to the store: a leaf's canonical bytes (the entry's spec JSON), a
proof, and tree heads it trusts.

>>> from krepis.tlog import leaf_hash, verify_inclusion
>>> proof = journal.inclusion_proof(seq)                                  # doctest: +SKIP
>>> verify_inclusion(leaf_hash(entry.to_json().encode()), proof.index, proof.tree_size,
...                  proof.path, trusted_root)                           # doctest: +SKIP
"""

from __future__ import annotations

from ._merkle import (
    EMPTY_ROOT,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)
from ._reader import ConsistencyProof, InclusionProof

__all__ = [
    "EMPTY_ROOT",
    "ConsistencyProof",
    "InclusionProof",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]
