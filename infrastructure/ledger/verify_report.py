"""What verify() returns: each problem with its kind, position and session, and a summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from .format import ZERO_HASH


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
        return f"{self.kind.value} at {where}{session}: {self.detail}"


@dataclass
class VerificationReport:
    events_checked: int = 0
    signers_seen: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    head_position: int = 0
    head_hash: bytes = ZERO_HASH
    sessions: int = 0
    checkpoint_checked: bool = False
    workers: int = 1

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds_at(self, position: int) -> set[ProblemKind]:
        return {p.kind for p in self.problems if p.position == position}

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} PROBLEM(S)"
        lines = [
            f"ledger verification: {state}",
            f"  events checked: {self.events_checked} in {self.sessions} sessions "
            f"(head position {self.head_position}, {self.workers} worker(s))",
            "  signers seen: "
            + (", ".join(f"{d} ({n})" for d, n in sorted(self.signers_seen.items())) or "none"),
        ]
        if self.checkpoint_checked:
            lines.append("  checkpoint: checked")
        lines += [f"  - {p}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        return "\n".join(lines)
