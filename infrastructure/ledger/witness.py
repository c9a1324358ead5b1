"""Peers witness each other's ledgers (decision 25 in docs/spec-decisions.md).

Over an established session, each node offers the other its newest signed checkpoint (C2SP
tlog-checkpoint, checkpoint.py) with a consistency proof from the last checkpoint of its
ledger that peer witnessed: one note and O(log n) hashes. The witness checks the signature
and the proof against what it witnessed before (``WitnessedLog``, recorded in its own
ledger), records ``CheckpointWitnessed`` and answers with a timestamped cosignature (C2SP
tlog-cosignature), which the origin keeps beside its checkpoint (``ledger_cosignatures``).
A checkpoint that does not extend the last one witnessed — a log rewritten, truncated or
forked, even re-signed with its owner's own key — is recorded as ``CheckpointConflict`` with
both signed checkpoints, and not cosigned.

Sans-I/O: ``offer`` / ``witness`` / ``accept_reply`` take and give values; a node carries
them in sealed frames (transports/witness_frames.py). Everything a witness keeps is in its
ledger, so a restart forgets nothing but the hints below.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from l2_session.domain.session.topics import STORED_TOPICS
from l2_session.domain.session.witnessed import WitnessedLog, witnessed_log_id
from l2_session.infrastructure.identity import DIDError, NodeIdentity, public_key_from_did_key
from l2_session.infrastructure.ledger.checkpoint import Checkpoint, CheckpointError
from l2_session.infrastructure.ledger.merkle import ProofError, verify_consistency
from l2_session.infrastructure.ledger.tree_head import (
    TreeHeadError,
    cosign,
    verify_cosignature,
)

log = logging.getLogger(__name__)

HASH = 32
MAX_PROOF_HASHES = 128  # a consistency proof of a tree of 2**63 leaves has fewer


@dataclass(frozen=True)
class Offer:
    """What the origin sends: its checkpoint's text and the proof that it extends the
    checkpoint of ``old_size`` events (0: none; the witness has seen nothing of it)."""

    checkpoint: str
    old_size: int
    proof: tuple[bytes, ...]


@dataclass(frozen=True)
class Reply:
    """What the witness answers: the cosignature line of the checkpoint of ``size`` events
    and ``root``, or ``reason`` why not; ``witnessed`` is the size of the checkpoint the
    witness holds as the last one witnessed (the next proof starts there)."""

    size: int
    root: bytes
    cosignature: str
    reason: str
    witnessed: int


TOO_SOON = "too soon"  # a refusal that says nothing of the ledger: the origin keeps its hints
MIN_GAP_US = 10_000_000  # one offer per peer this often at most is witnessed
MAX_PEERS_TIMED = 4096  # peers whose last offer time is kept before old ones are let go


class Witnessing:
    """One node's witnessing, both ways, on its ledger. A peer's offers are witnessed at most
    one per ``min_gap_us``: each may append to this node's ledger (a ``WitnessedLog`` event),
    so a peer that offers without pause — honest checkpoints or conflicting ones — costs at
    most one append per gap; the others are refused unread, counted as ``too_soon``."""

    def __init__(
        self, ledger: Any, identity: NodeIdentity, *, min_gap_us: int = MIN_GAP_US
    ) -> None:
        if min_gap_us < 0:
            raise ValueError(f"min_gap_us must be >= 0, got {min_gap_us}")
        self.ledger = ledger
        self.identity = identity
        self.min_gap_us = min_gap_us
        self._from: dict[str, int] = {}  # peer did -> size the peer last witnessed (a hint)
        self._offered_at: dict[str, int] = {}  # peer did -> when its last offer was witnessed
        self.counts: Counter[str] = Counter()  # offered, cosigned, refused, conflicts, ...

    # ------------------------------------------------------------------ the origin's side
    def offer(self, peer_did: str) -> Offer | None:
        """The offer for ``peer_did``: this node's checkpoint of its ledger as it is now
        (signed anew if the ledger grew since the newest), with the proof from what the peer
        witnessed last. None when the peer cosigned that very checkpoint already."""
        newest = self._own_checkpoint()
        size, _ = self.ledger.tree_head()
        if size == 0:
            return None
        if newest is None or newest[1].size < size:
            newest = self._new_checkpoint()
        checkpoint_id, cp = newest
        if self._cosigned(peer_did, checkpoint_id, cp):
            return None
        old = self._from.get(peer_did)
        if old is None:  # after a restart: what the peer cosigned last
            old = self._from[peer_did] = self._last_cosigned(peer_did)
        # (larger than cp.size: this ledger shrank, and the witness will say so)
        proof = self.ledger.consistency_proof(old, cp.size).hashes if 0 < old < cp.size else ()
        self.counts["offered"] += 1
        return Offer(cp.to_text(), old, tuple(proof))

    def accept_reply(self, peer_did: str, reply: Reply, now_us: int) -> bool:
        """Keep the cosignature in ``reply`` if it is ``peer_did``'s on one of this node's
        checkpoints; whether it was kept. A refusal is logged and counted, and its
        ``witnessed`` size starts the next proof."""
        if reply.reason.startswith(TOO_SOON):
            self.counts["too_soon"] += 1
            return False
        self._from[peer_did] = reply.witnessed
        if not reply.cosignature:
            self.counts["refused"] += 1
            level = logging.WARNING if reply.reason.startswith("conflict") else logging.INFO
            log.log(
                level, "%s did not cosign checkpoint %d: %s", peer_did, reply.size, reply.reason
            )
            return False
        try:
            key = public_key_from_did_key(peer_did)
        except (DIDError, ValueError):
            self.counts["bad_cosignature"] += 1
            return False
        for checkpoint_id, cp in self.ledger.stored_checkpoints(newest=16)[::-1]:
            if (cp.size, cp.root) != (reply.size, reply.root):
                continue
            try:
                verify_cosignature(peer_did, key, cp.body().decode(), reply.cosignature)
            except TreeHeadError:
                continue
            self.ledger.record_cosignature(checkpoint_id, peer_did, reply.cosignature, now_us)
            self.counts["cosigned"] += 1
            return True
        self.counts["bad_cosignature"] += 1
        log.warning("a cosignature from %s fits no checkpoint of this ledger", peer_did)
        return False

    def _own_checkpoint(self) -> tuple[int, Checkpoint] | None:
        for checkpoint_id, cp in self.ledger.stored_checkpoints(newest=16)[::-1]:
            if cp.root is not None and cp.signer == self.identity.did:
                return checkpoint_id, cp
        return None

    def _new_checkpoint(self) -> tuple[int, Checkpoint]:
        cp = self.ledger.checkpoint()
        found = self._own_checkpoint()
        assert found is not None and found[1] == cp
        return found

    def _cosigned(self, peer_did: str, checkpoint_id: int, cp: Checkpoint) -> bool:
        """Whether ``peer_did``'s cosignature of ``cp`` is kept."""
        key = public_key_from_did_key(peer_did)
        for witness, line in self.ledger.cosignatures_of(checkpoint_id):
            if witness == peer_did:
                try:
                    verify_cosignature(peer_did, key, cp.body().decode(), line)
                    return True
                except TreeHeadError:
                    continue
        return False

    def _last_cosigned(self, peer_did: str) -> int:
        """The size of the largest checkpoint of this ledger that ``peer_did`` cosigned."""
        cosigned = {cid for cid, witness, _ in self.ledger.cosignatures() if witness == peer_did}
        sizes = [cp.size for cid, cp in self.ledger.stored_checkpoints() if cid in cosigned]
        return max(sizes, default=0)

    def witnessed(self) -> list[dict[str, Any]]:
        """What this node witnessed of each other ledger, from its own ledger: the origin, the
        last checkpoint witnessed (size, signer), how many, and the conflicts found."""
        started = STORED_TOPICS["WitnessedLog.Started"]
        recorder = self.ledger.ledger_recorder
        with recorder.reading() as cur:
            cur.execute(
                f"SELECT session_id FROM {recorder.tree_sql.events} WHERE topic = "
                f"{recorder.tree_sql.mark} ORDER BY position",
                (started,),
            )
            ids = [row[0] for row in cur.fetchall()]
        found = []
        for sid in ids:
            log: WitnessedLog = self.ledger.repository.get(UUID(hex=str(sid)))
            conflict = log.last_conflict or {}
            found.append(
                {
                    "origin": log.origin, "size": log.size, "signer": log.signer,
                    "witnessed": log.witnessed, "conflicts": log.conflicts,
                    "last_conflict": conflict.get("reason"),
                }
            )  # fmt: skip
        return found

    # ------------------------------------------------------------------ the witness's side
    def witness(self, peer_did: str, offer: Offer, now_us: int) -> Reply:
        """Check ``peer_did``'s ``offer`` against what this node witnessed of its ledger,
        record the outcome in this node's ledger and answer."""
        last = self._offered_at.get(peer_did)
        if last is not None and 0 <= now_us - last < self.min_gap_us:
            self.counts["too_soon"] += 1
            return Reply(0, bytes(HASH), "", f"{TOO_SOON}: one offer per {self.min_gap_us} µs", 0)
        if len(self._offered_at) >= MAX_PEERS_TIMED:
            cutoff = now_us - self.min_gap_us
            self._offered_at = {p: t for p, t in self._offered_at.items() if t > cutoff}
        self._offered_at[peer_did] = now_us
        try:
            cp = Checkpoint.parse(offer.checkpoint)
        except CheckpointError as e:
            return self._refuse(0, bytes(HASH), f"malformed checkpoint: {e}", 0)
        if cp.root is None:
            return self._refuse(cp.size, bytes(HASH), "a format-1 checkpoint signs no root", 0)
        if cp.signer != peer_did:
            return self._refuse(cp.size, cp.root, f"signed by {cp.signer}, not the peer", 0)
        if not cp.signature_valid():
            return self._refuse(cp.size, cp.root, "its signature does not verify", 0)
        if len(offer.proof) > MAX_PROOF_HASHES or any(len(h) != HASH for h in offer.proof):
            return self._refuse(cp.size, cp.root, "a malformed proof", 0)
        try:
            seen: WitnessedLog = self.ledger.repository.get(witnessed_log_id(cp.origin))
        except AggregateNotFoundError:
            seen = WitnessedLog.start(cp.origin, now_us)
        text = cp.to_text()
        if seen.size == 0:
            return self._cosign(seen, peer_did, cp, text, now_us)
        root = bytes.fromhex(seen.root)
        if cp.size < seen.size:
            return self._conflict(seen, peer_did, cp, text, "truncated", now_us)
        if cp.size == seen.size:
            if cp.root != root:
                return self._conflict(seen, peer_did, cp, text, "forked", now_us)
            return self._cosign(seen, peer_did, cp, text, now_us, record=False)
        if offer.old_size != seen.size:
            return self._refuse(
                cp.size, cp.root, f"a proof from {offer.old_size}, not {seen.size}", seen.size
            )
        try:
            verify_consistency(seen.size, cp.size, root, cp.root, offer.proof)
        except ProofError:
            return self._conflict(seen, peer_did, cp, text, "rewritten", now_us)
        return self._cosign(seen, peer_did, cp, text, now_us)

    def _cosign(
        self,
        seen: WitnessedLog,
        peer_did: str,
        cp: Checkpoint,
        text: str,
        now_us: int,
        *,
        record: bool = True,
    ) -> Reply:
        assert cp.root is not None
        if record:
            seen.checkpoint_witnessed(
                at_us=now_us, peer_did=peer_did, size=cp.size, root=cp.root.hex(), checkpoint=text
            )
            self.ledger.save(seen)
        line = cosign(
            self.identity.did, self.identity.private_key, cp.body().decode(), now_us // 1_000_000
        )
        self.counts["witnessed"] += 1
        return Reply(cp.size, cp.root, line, "", cp.size)

    def _conflict(
        self, seen: WitnessedLog, peer_did: str, cp: Checkpoint, text: str, how: str, now_us: int
    ) -> Reply:
        assert cp.root is not None
        seen.checkpoint_conflict(
            at_us=now_us, peer_did=peer_did, reason=how, witnessed=seen.checkpoint, offered=text
        )
        self.ledger.save(seen)
        self.counts["conflicts"] += 1
        log.warning(
            "%s offered a checkpoint of %s that does not extend the one witnessed (%s: size "
            "%d after %d)", peer_did, cp.origin, how, cp.size, seen.size,
        )  # fmt: skip
        return Reply(cp.size, cp.root, "", f"conflict: {how}", seen.size)

    def _refuse(self, size: int, root: bytes, reason: str, witnessed: int) -> Reply:
        self.counts["not_witnessed"] += 1
        return Reply(size, root, "", reason, witnessed)
