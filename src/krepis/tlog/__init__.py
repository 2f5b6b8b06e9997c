"""Checking a krepis journal's Merkle tree from public data only (RFC 6962 / RFC 9162).

A verifier needs no access to the store: a leaf's canonical bytes (the entry's spec JSON), a
proof, and tree heads it trusts — a signed checkpoint, opened with the log's verifier key by
:func:`open_checkpoint` (``SovereignJournal.verify_extends`` checks a whole store against one),
or with witnesses' keys too by :func:`open_cosigned_checkpoint`, which needs a quorum of their
cosignatures (``SovereignJournal.cosign_checkpoint`` collects them).

>>> from krepis.tlog import leaf_hash, verify_inclusion
>>> proof = journal.inclusion_proof(seq)                                  # doctest: +SKIP
>>> verify_inclusion(leaf_hash(entry.to_json().encode()), proof.index, proof.tree_size,
...                  proof.path, trusted_root)                           # doctest: +SKIP
"""

from __future__ import annotations

from ._collect import CosignResult, QuorumError, WitnessAnswer, WitnessEndpoint
from ._cosig import (
    Cosignature,
    CosignedCheckpoint,
    Cosigner,
    CosignerKey,
    find_cosignatures,
    generate_cosigner,
    open_cosigned_checkpoint,
)
from ._merkle import (
    EMPTY_ROOT,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)
from ._note import Checkpoint, NoteError, Signer, Verifier, generate_signer, open_checkpoint, open_note
from ._reader import ConsistencyProof, InclusionProof, TrustReport

__all__ = [
    "EMPTY_ROOT",
    "Checkpoint",
    "ConsistencyProof",
    "CosignResult",
    "Cosignature",
    "CosignedCheckpoint",
    "Cosigner",
    "CosignerKey",
    "InclusionProof",
    "NoteError",
    "QuorumError",
    "Signer",
    "TrustReport",
    "Verifier",
    "WitnessAnswer",
    "WitnessEndpoint",
    "find_cosignatures",
    "generate_cosigner",
    "generate_signer",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_cosigned_checkpoint",
    "open_note",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]
