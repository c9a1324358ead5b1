"""``l2-session simulate``: sessions driven through SPEC-018's life on a new signed ledger.

Several sessions are established with the manual clock, exchange heartbeats and messages,
rotate their keys once, and are saved together (group commit); then the ledger is checkpointed,
verified, reopened and replayed, the checkpoint is saved beside the ledger, and a summary is
printed.

The simulation only ever creates: a ledger or checkpoint file that already exists, or a PostgreSQL
schema that already holds a ledger, is refused before anything is written, so that it never
adds to someone's ledger. Its manual clock ends its simulated minutes at the moment it runs, so
the ledger's timestamps say when it ran and a node can go on appending to it.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.session import Session
from l2_session.infrastructure.clock import ManualClock, SystemClock
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.pg_url import PostgresLocation, is_postgres_url
from l2_session.infrastructure.ledger.verify import VerificationReport, verify
from l2_session.infrastructure.ledger.verify_report import printable
from l2_session.tools.errors import UsageError

SECOND = 1_000_000
HANDSHAKE_US = 20_000  # from INIT to an established session
ANSWER_US = 40_000  # a heartbeat's answer (SPEC-018 §2.2: within 2 s)


@dataclass(frozen=True)
class SimulationResult:
    location: str  # as it may be printed (a URL without its password)
    checkpoint_file: str
    signer: str
    sessions: int
    events: int
    append_seconds: float
    verify_seconds: float
    replayed_ok: bool
    report: VerificationReport
    checkpoint: str
    states: list[str]

    @property
    def ok(self) -> bool:
        return self.replayed_ok and self.report.ok


def default_checkpoint_file(location: str | Path) -> Path:
    """Beside a ledger file (``<file>.checkpoint``); for a PostgreSQL ledger, in the current
    folder, named after its schema."""
    if is_postgres_url(location):
        return Path(
            f"l2-session-simulation-{PostgresLocation.parse(str(location)).schema}.checkpoint"
        )
    return Path(f"{location}.checkpoint")


def _refuse_an_existing_ledger(location: str | Path) -> None:
    if is_postgres_url(location):
        from l2_session.infrastructure.ledger.pg_schema import read_meta

        pg = PostgresLocation.parse(str(location))
        with pg.connect() as conn, conn.cursor() as cur:
            if read_meta(cur, pg.schema) is not None:
                raise UsageError(
                    f"{pg.redacted()} already holds a ledger; the simulation only creates a new "
                    "one, so that it never adds to a ledger — give it another ?schema="
                )
        return
    path = Path(location)
    if path.exists() or path.is_symlink():
        raise UsageError(
            f"{path} already exists; the simulation only creates a new ledger, so that it never "
            "adds to or overwrites a file — remove it, or give --ledger a new file name"
        )
    if not path.parent.is_dir():
        why = "is not a folder" if path.parent.exists() else "does not exist"
        raise UsageError(f"cannot create {path}: {path.parent} {why} — give a path in a folder")


@contextlib.contextmanager
def _created(location: str | Path, checkpoint_file: Path) -> Iterator[None]:
    """Claim ``checkpoint_file`` (it must not exist); if the simulation then fails, remove what it
    created, so that a failed simulation leaves no half-made ledger behind."""
    try:
        checkpoint_file.open("x").close()
    except FileExistsError:
        raise UsageError(
            f"{checkpoint_file} already exists; the simulation does not overwrite it — remove "
            "it, or give --save-checkpoint another file"
        ) from None
    except OSError as e:
        raise UsageError(f"cannot create {checkpoint_file}: {e.strerror}") from e
    made = [checkpoint_file]
    if not is_postgres_url(location):
        ledger_files = [Path(f"{location}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
        made += [p for p in ledger_files if not p.exists()]
    try:
        yield
    except BaseException:
        for path in made:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


def run_simulation(
    location: str | Path,
    *,
    sessions: int = 6,
    heartbeats: int = 24,
    checkpoint_file: str | Path | None = None,
) -> SimulationResult:
    """Run the simulation on a new ledger at ``location``; its checkpoint is saved to
    ``checkpoint_file`` (default: default_checkpoint_file). UsageError if either exists."""
    if sessions < 1:
        raise ValueError(f"sessions must be >= 1, got {sessions}")
    _refuse_an_existing_ledger(location)
    saved = Path(checkpoint_file) if checkpoint_file else default_checkpoint_file(location)
    with _created(location, saved):
        return _run(location, sessions, heartbeats, saved)


def _run(location: str | Path, sessions: int, heartbeats: int, saved: Path) -> SimulationResult:
    config = SessionConfig()
    interval = round(config.heartbeat_interval * SECOND)
    # The simulated minutes end now: a ledger's timestamps never decrease, and one dated in
    # the future would refuse a node's appends until the real clock caught up.
    span = HANDSHAKE_US + heartbeats * (interval + ANSWER_US)
    clock = ManualClock(wall_us=SystemClock().wall_us() - span)
    identity, storage_key = NodeIdentity.generate(), os.urandom(32)
    started = time.perf_counter()
    ledger = SessionLedger(location, identity=identity, storage_key=storage_key, clock=clock)
    try:
        now = clock.wall_us()
        live = [
            Session.open(f"did:key:z6MkSimulatedPeer{i}", "initiator", config, now)
            for i in range(sessions)
        ]
        for s in live:
            s.initiate_handshake(now)
        ledger.save(*live)
        now += HANDSHAKE_US
        for s in live:
            s.receive_valid_response(
                now, key_material=os.urandom(32), prekeys="simulated-prekeys-v1"
            )
            s.submit_message(now, b"hello over an established session")
        ledger.save(*live)
        for beat in range(heartbeats):
            now += interval  # SPEC-018 §2.2: a heartbeat after 30 s without activity
            clock.set_wall_us(now)
            for s in live:
                counter = s.heartbeat_due(now)
                s.receive_heartbeat_ack(now + ANSWER_US, counter)
                if beat % 6 == 0:
                    s.submit_message(now + ANSWER_US, f"message {beat}".encode())
            now += ANSWER_US
            ledger.save(*live)
        checkpoint = ledger.checkpoint()
        appended = time.perf_counter() - started
        head = ledger.ledger_recorder.head()[0]
    finally:
        ledger.close()

    reopened = SessionLedger(location, identity=identity, storage_key=storage_key, clock=clock)
    try:
        replayed_ok = all(
            reopened.repository.get(s.id).__dict__ == s.__dict__ | {"_pending_events": []}
            for s in live
        )
    finally:
        reopened.close()
    started = time.perf_counter()
    report = verify(location, checkpoint, trusted_signers=[identity.did])
    verified = time.perf_counter() - started
    saved.write_text(checkpoint.to_text(), encoding="utf-8")
    shown = (
        PostgresLocation.parse(str(location)).redacted()
        if is_postgres_url(location)
        else str(location)
    )
    return SimulationResult(
        location=shown,
        checkpoint_file=str(saved),
        signer=identity.did,
        sessions=sessions,
        events=head,
        append_seconds=appended,
        verify_seconds=verified,
        replayed_ok=replayed_ok,
        report=report,
        checkpoint=checkpoint.to_text(),
        states=sorted({str(s.state) for s in live}),
    )


def print_summary(result: SimulationResult, *, as_json: bool = False) -> None:
    """The summary, then the checkpoint exactly as ``verify --checkpoint`` reads it, and the
    command that checks the ledger against it (or all of it as one JSON object)."""
    if as_json:
        from l2_session.tools.show import print_json

        print_json(
            {
                "ledger": result.location,
                "events": result.events,
                "sessions": result.sessions,
                "states": list(result.states),
                "replayed_identical": result.replayed_ok,
                "checkpoint_file": str(result.checkpoint_file),
                "checkpoint": result.checkpoint,
                "signer": result.signer,
                "verification": result.report.to_json(),
            }
        )
        return
    print(printable(f"l2-session simulate: ledger {result.location}"))
    print(
        f"  appended {result.events} signed events for {result.sessions} sessions "
        f"in {result.append_seconds:.2f} s (states now: {', '.join(result.states)})"
    )
    replay = "identical" if result.replayed_ok else "DIFFERENT"
    print(f"  reopened and replayed every session: {replay}")
    print(f"  verified in {result.verify_seconds:.2f} s against its checkpoint:")
    print(result.report.summary())
    print()
    print(printable(f"its checkpoint, saved to {result.checkpoint_file}:"))
    print(result.checkpoint, end="")
    print()
    command = ["l2-session", "verify", "--ledger", result.location,
               "--checkpoint", result.checkpoint_file, "--trust", result.signer]  # fmt: skip
    print("check the ledger against it at any later time (a rewritten or truncated history shows):")
    print("  " + printable(shlex.join(command)))
