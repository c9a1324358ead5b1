"""What the recorder accepts: every insert is refused with a clear error and stores nothing, or
stores rows that read back equal by every path. The ledger is append-only: a row that cannot be
read back would poison every read that meets it, for good."""

from __future__ import annotations

import threading
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.infrastructure.ledger import (
    ConcurrencyConflict,
    GroupCommitConfig,
    InvalidEvent,
    LedgerError,
    PayloadTooLarge,
    SessionChainError,
)
from l2_session.infrastructure.ledger.codec import LedgerStoredEvent
from l2_session.infrastructure.ledger.format import MAX_PAYLOAD_BYTES, MAX_SEALED_BYTES
from l2_session.infrastructure.ledger.verify import verify

REFUSALS = (InvalidEvent, PayloadTooLarge, SessionChainError, ConcurrencyConflict)

# Any originator id eventsourcing's StoredEvent can carry, UUIDs in their several spellings too.
OTHER_IDS = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex),
    st.text(max_size=40),
    st.integers(),
    st.none(),
    st.binary(max_size=16),
)
VERSIONS = st.one_of(
    st.integers(min_value=-3, max_value=3),
    st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), 10**30]),
    st.integers(),
    st.booleans(),
    st.just(1.0),
    st.just("1"),
)
TOPICS = st.one_of(
    st.text(st.characters(categories=None, exclude_categories=[]), max_size=30),  # surrogates too
    st.sampled_from(["", "\x00", "a\x00b", "x" * 256, "x" * 257, "é" * 128, "é" * 129, "\ud800"]),
    st.just("module:Class.Nested"),
    st.binary(max_size=8),
    st.none(),
)
# Non-empty, no NUL, no lone surrogate, at most 256 bytes as UTF-8 (docs/ledger-format.md §9).
VALID_TOPICS = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=64
)
STATES = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from([b"", b"\x00" * MAX_PAYLOAD_BYTES, b"\xff" * (MAX_PAYLOAD_BYTES + 1)]),
    st.text(max_size=8),
    st.binary(max_size=8).map(bytearray),
    st.none(),
)


def _fields(event: Any) -> tuple[Any, ...]:
    return (event.originator_id, event.originator_version, event.topic, event.state)


def test_every_insert_is_refused_clearly_or_reads_back_equal(ledger_factory):
    ledger = ledger_factory()
    recorder = ledger.recorder
    stored = 0

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.data())
    def insert_some(data: st.DataObject) -> None:
        nonlocal stored
        # First an event of the right types, with any content: it must be stored.
        session = uuid4()
        first = StoredEvent(
            originator_id=session,
            originator_version=1,
            topic=data.draw(VALID_TOPICS),
            state=data.draw(st.binary(max_size=4096)),
        )
        assert insert_and_read_back(first), first
        last_version: dict[UUID, int] = {session: 1}  # of the sessions this example stored
        stored += 1
        for _ in range(data.draw(st.integers(min_value=1, max_value=6))):
            kind = data.draw(st.sampled_from(["new", "stored", "other"]))
            if kind == "other":
                session: Any = data.draw(OTHER_IDS)
            elif kind == "stored" and last_version:
                session = data.draw(st.sampled_from(sorted(last_version, key=str)))
            else:
                session = uuid4()  # new to the ledger, whatever earlier examples stored
            following = last_version.get(session, 0) + 1 if isinstance(session, UUID) else 1
            event = StoredEvent(
                originator_id=session,
                originator_version=data.draw(st.one_of(st.just(following), VERSIONS)),
                topic=data.draw(st.one_of(st.just("module:Class.Nested"), TOPICS)),
                state=data.draw(st.one_of(st.just(b"{}"), STATES)),
            )
            if insert_and_read_back(event):
                last_version[session] = event.originator_version
                stored += 1

    def insert_and_read_back(event: StoredEvent) -> bool:
        """Whether the ledger took the event; asserts the outcome was one of the two."""
        before = recorder.max_notification_id()
        try:
            positions = recorder.insert_events([event])
        except LedgerError as refused:
            assert isinstance(refused, REFUSALS), repr(refused)
            assert len(str(refused)) > 20  # it names what was wrong
            assert recorder.max_notification_id() == before  # and stored nothing
            return False
        [position] = positions
        assert position == (before or 0) + 1 == recorder.max_notification_id()
        version = event.originator_version
        [back] = recorder.select_events(event.originator_id, gt=version - 1, lte=version)
        assert _fields(back) == _fields(event)
        [notification] = recorder.select_notifications(position, 1)
        assert notification.id == position and _fields(notification) == _fields(event)
        return True

    insert_some()
    assert stored >= 30  # accepted inserts were read back, not refusals only
    # Every page of the log reads (a poisoned row failed every page that held it).
    assert len(recorder.select_notifications(None, stored + 10)) == stored
    assert verify(ledger).ok


@pytest.mark.parametrize(
    "session", ["not-a-uuid", "5e551011-5e55-1011-5e55-10115e551011", 42, None]
)
def test_a_session_id_that_is_not_a_uuid_is_refused_before_anything_is_written(
    ledger_factory, session
):
    ledger = ledger_factory()
    recorder = ledger.recorder
    event = StoredEvent(originator_id=session, originator_version=1, topic="t", state=b"{}")
    with pytest.raises(InvalidEvent, match=r"session \(originator\) id must be a uuid.UUID, got"):
        recorder.insert_events([event])
    assert recorder.max_notification_id() is None
    assert recorder.select_notifications(None, 10) == []


def test_a_sealed_column_over_its_limit_is_refused(ledger_factory):
    recorder = ledger_factory().recorder
    event = LedgerStoredEvent(
        originator_id=uuid4(),
        originator_version=1,
        topic="t",
        state=b"{}",
        sealed=b"x" * (MAX_SEALED_BYTES + 1),
    )
    with pytest.raises(PayloadTooLarge, match=f"sealed column is {MAX_SEALED_BYTES + 1} bytes"):
        recorder.insert_events([event])
    assert recorder.max_notification_id() is None


def test_a_bad_request_fails_alone_in_its_group_commit_batch(ledger_factory):
    """Requests refused before they are queued (a session id that is not a UUID) or inside the
    batch's transaction (a version with nothing before it) fail alone: the rest commit."""
    ledger = ledger_factory(group_commit=GroupCommitConfig(max_delay=0.3))
    recorder = ledger.recorder

    def event(session: Any, version: int = 1) -> StoredEvent:
        return StoredEvent(originator_id=session, originator_version=version, topic="t", state=b"")

    requests = {f"good {i}": event(uuid4()) for i in range(6)}
    requests["gap"] = event(uuid4(), version=2)
    requests["not a uuid"] = event("not-a-uuid")
    outcomes: dict[str, Any] = {}
    start = threading.Barrier(len(requests))

    def submit(name: str) -> None:
        start.wait()
        try:
            outcomes[name] = recorder.insert_events([requests[name]])
        except LedgerError as error:
            outcomes[name] = error

    threads = [threading.Thread(target=submit, args=(name,)) for name in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert isinstance(outcomes.pop("not a uuid"), InvalidEvent)
    assert isinstance(outcomes.pop("gap"), SessionChainError)
    assert sorted(p for positions in outcomes.values() for p in positions) == list(range(1, 7))
    assert recorder.committer.batches < 7  # they did share transactions
    assert len(recorder.select_notifications(None, 100)) == 6
    assert verify(ledger).ok
