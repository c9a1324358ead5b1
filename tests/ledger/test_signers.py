"""A node becomes a signer of a ledger with its first write, in that write's transaction:
opening a ledger, reading it, or an append that fails leaves no trace in ledger_signers, which
is append-only (docs/ledger-format.md §7)."""

from __future__ import annotations

import pytest
from eventsourcing.application import AggregateNotFoundError
from eventsourcing.persistence import StoredEvent
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import ConcurrencyConflict
from l2_session.infrastructure.ledger.verify import verify
from ledger_aggregates import Conversation


def test_opening_reading_and_failing_with_another_identity_registers_nothing(
    ledger_factory, identity
):
    first = ledger_factory()
    conversation = Conversation(peer="did:key:peer")
    first.save(conversation)
    assert first.signers() == {identity.did}
    first.close()

    stranger = ledger_factory(identity=NodeIdentity.generate())  # the wrong key, say
    assert stranger.repository.get(conversation.id).version == 1
    with pytest.raises(AggregateNotFoundError):
        stranger.repository.get(Conversation(peer="never saved").id)
    assert len(stranger.notification_log.select(1, 10)) == 1
    clash = StoredEvent(originator_id=conversation.id, originator_version=1, topic="t", state=b"")
    with pytest.raises(ConcurrencyConflict):
        stranger.recorder.insert_events([clash])  # an append that fails: rolled back whole
    stranger.close()

    assert ledger_factory().signers() == {identity.did}
    report = verify(ledger_factory())
    assert report.ok and set(report.signers_seen) == {identity.did}


def test_a_ledger_nobody_wrote_to_has_no_signer(ledger_factory):
    ledger = ledger_factory()
    assert ledger.signers() == set()
    assert verify(ledger).ok


def test_an_identity_is_registered_with_its_first_append_and_verifies(ledger_factory, identity):
    ledger_factory().save(Conversation(peer="did:key:peer"))
    second = NodeIdentity.generate()
    node = ledger_factory(identity=second)
    assert node.signers() == {identity.did}
    node.save(Conversation(peer="did:key:other"))
    assert node.signers() == {identity.did, second.did}
    report = verify(node)
    assert report.ok and set(report.signers_seen) == {identity.did, second.did}


def test_a_checkpoint_or_a_snapshot_registers_its_signer(ledger_factory, identity):
    conversation = Conversation(peer="did:key:peer")
    ledger_factory().save(conversation)
    for write in ("checkpoint", "snapshot"):
        other = NodeIdentity.generate()
        node = ledger_factory(identity=other)
        if write == "checkpoint":
            checkpoint = node.checkpoint()
            assert verify(node, checkpoint).ok  # signed by a registered signer
        else:
            node.take_snapshot(conversation.id)
            # Usable: a snapshot counts only if its signer is registered (snapshots.py).
            assert [s.originator_version for s in node.snapshots.get(conversation.id)] == [1]
        assert other.did in node.signers()


def test_a_registration_signs_every_field_of_its_row(ledger_factory, identity, ledger_location):
    """Format 2: the signature covers registered_at too. Moving a registration's time makes it
    no registration at all (its events' signer is then unknown); a format-1 registration,
    signed without the time, is still accepted."""
    from l2_session.infrastructure.ledger.chain import registration_valid, signer_statement
    from pgserver import open_raw

    ledger = ledger_factory()
    ledger.save(Conversation(peer="did:key:peer"))
    raw = open_raw(ledger_location)
    did, registered_at, signature = raw.execute(
        "SELECT did, registered_at, signature FROM ledger_signers"
    ).fetchone()
    signature = bytes(signature)
    assert registration_valid(ledger.ledger_id, did, registered_at, signature)
    assert not registration_valid(ledger.ledger_id, did, registered_at - 1, signature)
    old = identity.sign(signer_statement(ledger.ledger_id, did))
    assert registration_valid(ledger.ledger_id, did, 0, old)
    assert verify(ledger).ok


def test_a_registration_whose_time_was_moved_no_longer_registers(ledger_factory, ledger_path):
    import sqlite3

    from l2_session.infrastructure.ledger.verify import ProblemKind

    ledger = ledger_factory()
    ledger.save(Conversation(peer="did:key:peer"))
    ledger.close()
    db = sqlite3.connect(ledger_path)
    db.execute("DROP TRIGGER ledger_signers_no_update")
    db.execute("UPDATE ledger_signers SET registered_at = registered_at - 3600000000")
    db.commit()
    db.close()
    report = verify(ledger_path)
    assert {p.kind for p in report.problems} == {ProblemKind.UNKNOWN_SIGNER}
