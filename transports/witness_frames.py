"""Witnessing over a session (decision 25; infrastructure/ledger/witness.py): two frames of
the node's own, sealed in the session's channel like data (sealed.py), never sent in clear.

- ``CheckpointOffer(conversation, checkpoint, old_size, proof)``: this node's signed
  checkpoint (the note's UTF-8 text) and the consistency proof from the checkpoint of
  ``old_size`` events its peer witnessed last (0: none), as 32-byte hashes one after another;
- ``CheckpointReply(conversation, size, root, cosignature, reason, witnessed)``: the witness's
  cosignature line (UTF-8) of the checkpoint of ``size`` events and ``root``, or empty and
  ``reason`` why not; ``witnessed``: the size of the checkpoint it holds as the last one
  witnessed.

frames.py kinds 15 and 16. The frames are a node's business: the session manager never sees
them, and a session's messages, counters and acknowledgements are not touched by them beyond
the channel counters their records use.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class CheckpointOffer:
    conversation: UUID
    checkpoint: bytes
    old_size: int
    proof: bytes


@dataclass(frozen=True, slots=True)
class CheckpointReply:
    conversation: UUID
    size: int
    root: bytes
    cosignature: bytes
    reason: str
    witnessed: int


WITNESS_FRAMES = (CheckpointOffer, CheckpointReply)
