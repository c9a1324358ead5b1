"""What verify() returns: each problem with its kind, position and session, and a summary."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from l2_session.domain.session.topics import (
    PEER_REGISTERED,
    SESSION_CREATIONS,
    STORED_TOPICS,
)
from l2_session.infrastructure.ledger.format import ZERO_HASH


def printable(text: str) -> str:
    """``text`` with every character a terminal could act on (control and format characters,
    line breaks) written as a Python escape (``\\x1b``, ``\\u202e``): a ledger's strings are
    data from whoever wrote the file, and must not move the cursor or retitle the terminal
    that prints them."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


_AGGREGATE_KINDS = {
    **dict.fromkeys(SESSION_CREATIONS, "session"),
    PEER_REGISTERED: "peer",
    STORED_TOPICS["WitnessedLog.Started"]: "witnessed",
}
"""The kind of aggregate each creation event's topic starts: sessions and peers (their own
counts in the summary)."""


def aggregate_kind(creation_topic: str | None) -> str:
    """'session', 'peer', 'witnessed' (another ledger this node witnesses) or 'other' (any
    other aggregate, or one whose first event is not in the ledger), from the topic of an
    aggregate's version-1 event."""
    return _AGGREGATE_KINDS.get(creation_topic or "", "other")


class ProblemKind(StrEnum):
    HASH_MISMATCH = "hash_mismatch"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_SIGNER = "unknown_signer"
    VERSION_GAP = "version_gap"
    SESSION_CHAIN_BREAK = "session_chain_break"
    GLOBAL_CHAIN_BREAK = "global_chain_break"
    POSITION_GAP = "position_gap"
    SEALED_MISMATCH = "sealed_mismatch"
    MALFORMED_ROW = "malformed_row"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    TREE_MISMATCH = "tree_mismatch"
    TIME_REVERSED = "time_reversed"
    WITNESS_CONFLICT = "witness_conflict"
    DATABASE_CORRUPT = "database_corrupt"


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    position: int | None
    session_id: str | None
    detail: str

    def __str__(self) -> str:
        where = f"position {self.position}" if self.position is not None else "ledger"
        session = f" session {self.session_id}" if self.session_id else ""
        return printable(f"{self.kind.value} at {where}{session}: {self.detail}")


@dataclass
class VerificationReport:
    events_checked: int = 0
    signers_seen: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    head_position: int = 0
    head_hash: bytes = ZERO_HASH
    aggregates: dict[str, int] = field(default_factory=dict)  # by aggregate_kind()
    checkpoint_checked: bool = False  # a checkpoint was given and checked
    checkpoint_position: int | None = None
    stored_checkpoints: int = 0  # checkpoints recorded in the ledger, each checked
    cosignatures: int = 0  # witnesses' cosignatures of them kept in the ledger, each verified
    tree_root: bytes | None = None  # Merkle root of every event, recomputed
    tree_checked: bool = False  # the stored tree was compared with the recomputed one
    # Whether the signers were anchored outside the ledger: trusted signers given, or a
    # checkpoint seen before whose signature verifies. Without an anchor, "intact" means
    # "consistent with the keys the file itself registered" (a forger can register one).
    anchored: bool = False
    witnesses: int = 0  # other ledgers read for the checkpoints of this one they witnessed
    witnessed_checkpoints: int = 0
    # Conflicts this ledger's node recorded about other ledgers it witnesses (decision 25).
    conflicts_recorded: list[str] = field(default_factory=list)
    workers: int = 1

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def sessions(self) -> int:
        return self.aggregates.get("session", 0)

    @property
    def peers(self) -> int:
        return self.aggregates.get("peer", 0)

    def kinds_at(self, position: int) -> set[ProblemKind]:
        return {p.kind for p in self.problems if p.position == position}

    def to_json(self) -> dict[str, Any]:
        """The report as JSON values (``verify --json``; hashes in standard base64)."""
        b64 = base64.b64encode
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "head_position": self.head_position,
            "head_hash": b64(self.head_hash).decode(),
            "aggregates": dict(self.aggregates),
            "signers_seen": dict(self.signers_seen),
            "anchored": self.anchored,
            "tree_root": None if self.tree_root is None else b64(self.tree_root).decode(),
            "tree_checked": self.tree_checked,
            "stored_checkpoints": self.stored_checkpoints,
            "cosignatures": self.cosignatures,
            "checkpoint_checked": self.checkpoint_checked,
            "checkpoint_position": self.checkpoint_position,
            "witnesses": self.witnesses,
            "witnessed_checkpoints": self.witnessed_checkpoints,
            "conflicts_recorded": list(self.conflicts_recorded),
            "workers": self.workers,
            "problems": [
                {
                    "kind": p.kind.value,
                    "position": p.position,
                    "session_id": p.session_id,
                    "detail": p.detail,
                }
                for p in self.problems
            ],
        }

    def summary(self) -> str:
        """The report as lines for a terminal (every ledger-derived string escaped)."""
        state = "OK" if self.ok else f"{len(self.problems)} PROBLEM(S)"
        lines = [
            f"ledger verification: {state}",
            f"  events checked: {self.events_checked} in {self._counted()} "
            f"(head position {self.head_position}, {self.workers} worker(s))",
            "  signers seen: "
            + (", ".join(f"{d} ({n})" for d, n in sorted(self.signers_seen.items())) or "none"),
            "  signers: anchored (trusted signers, a checkpoint or witnesses given)"
            if self.anchored
            else "  signers: UNANCHORED — taken from the ledger's own registrations; a forger "
            "can register a key there. Pass --trust DID or --checkpoint FILE to anchor them",
        ]
        if self.tree_root is not None:
            lines.append(
                f"  tree: root {base64.b64encode(self.tree_root).decode()} of "
                f"{self.head_position} events"
                + (", stored tree checked" if self.tree_checked else " (format 1: no stored tree)")
            )
        if self.stored_checkpoints:
            lines.append(
                f"  stored checkpoints checked: {self.stored_checkpoints}, with "
                f"{self.cosignatures} witness cosignature(s)"
            )
        if self.conflicts_recorded:
            lines.append(
                f"  conflicts this node recorded in others' ledgers: "
                f"{len(self.conflicts_recorded)} — " + "; ".join(self.conflicts_recorded[:5])
            )
        if self.witnesses:
            lines.append(
                f"  witnesses: {self.witnesses} ledger(s), {self.witnessed_checkpoints} "
                "checkpoint(s) of this ledger witnessed in them, each checked"
            )
        if self.checkpoint_checked:
            mismatch = next(
                (p for p in self.problems if p.kind is ProblemKind.CHECKPOINT_MISMATCH), None
            )
            lines.append(
                f"  checkpoint: DOES NOT MATCH — {mismatch.detail}"
                if mismatch
                else f"  checkpoint: matches (position {self.checkpoint_position})"
            )
        lines += [f"  - {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        return "\n".join(printable(line) for line in lines)

    def _counted(self) -> str:
        """'1 session, 1 peer' (and other aggregates, when there are any)."""
        names = {"session": ("session", "sessions"), "peer": ("peer", "peers")}
        names["witnessed"] = ("witnessed ledger", "witnessed ledgers")
        names["other"] = ("other aggregate", "other aggregates")
        parts = [
            f"{n} {names[kind][n != 1]}"
            for kind in ("session", "peer", "witnessed", "other")
            if (n := self.aggregates.get(kind, 0)) or kind == "session"
        ]
        return ", ".join(parts)
