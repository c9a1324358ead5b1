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

from l2_session.infrastructure.ledger.witness import HASH, Offer, Reply, Witnessing


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


def offer_frame(
    witnessing: Witnessing, peer_did: str, conversation: UUID
) -> CheckpointOffer | None:
    """The offer of this node's checkpoint to ``peer_did`` on ``conversation``, if any."""
    offer = witnessing.offer(peer_did)
    if offer is None:
        return None
    return CheckpointOffer(
        conversation, offer.checkpoint.encode(), offer.old_size, b"".join(offer.proof)
    )


def take(
    witnessing: Witnessing, peer_did: str, frame: CheckpointOffer | CheckpointReply, now_us: int
) -> CheckpointReply | None:
    """A witnessing frame from ``peer_did``: an offer is witnessed and its reply returned to
    send back; a reply is taken (its cosignature kept if it is one) and nothing returned."""
    if isinstance(frame, CheckpointOffer):
        proof = frame.proof
        offer = Offer(
            frame.checkpoint.decode(errors="replace"), frame.old_size,
            tuple(proof[i : i + HASH] for i in range(0, len(proof), HASH)),
        )  # fmt: skip
        reply = witnessing.witness(peer_did, offer, now_us)
        return CheckpointReply(
            frame.conversation, reply.size, reply.root, reply.cosignature.encode(),
            reply.reason, reply.witnessed,
        )  # fmt: skip
    witnessing.accept_reply(
        peer_did,
        Reply(
            frame.size, frame.root, frame.cosignature.decode(errors="replace"), frame.reason,
            frame.witnessed,
        ),
        now_us,
    )  # fmt: skip
    return None
