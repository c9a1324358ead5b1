"""Checkpoint text: round trip, signature, and clear errors for every malformed part."""

from __future__ import annotations

import pytest
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger import Checkpoint, CheckpointError


@pytest.fixture
def checkpoint() -> Checkpoint:
    return Checkpoint.sign(
        NodeIdentity.generate(), "ab" * 16, 42, bytes(range(32)), 1_767_225_600_000_000
    )


def test_a_checkpoint_round_trips_through_its_text(checkpoint):
    parsed = Checkpoint.parse(checkpoint.to_text())
    assert parsed == checkpoint
    assert parsed.signature_valid()


def test_a_changed_body_no_longer_verifies(checkpoint):
    text = checkpoint.to_text().replace("\n42\n", "\n43\n")
    assert not Checkpoint.parse(text).signature_valid()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("\n\n", "\n"), "no blank line"),
        (lambda t: t.replace("l2-session ledger", "other log"), "origin"),
        (lambda t: t.replace("\n42\n", "\n042\n"), "not a decimal number"),
        (lambda t: t.replace("\n42\n", "\n-1\n"), "not a decimal number"),
        (lambda t: t.replace("time ", "when "), "time line"),
        (lambda t: t.replace("\u2014 ", "- "), "signature line"),
        (lambda t: t.replace("did:key:z", "did:web:z"), "did:web"),
    ],
)
def test_malformed_checkpoints_are_refused_with_the_reason(checkpoint, edit, message):
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.parse(edit(checkpoint.to_text()))


def test_a_signature_under_another_key_id_is_refused(checkpoint):
    other = NodeIdentity.generate().did
    with pytest.raises(CheckpointError, match="key id"):
        Checkpoint.parse(checkpoint.to_text().replace(checkpoint.signer, other))


def test_a_head_hash_of_the_wrong_length_is_refused(checkpoint):
    text = checkpoint.to_text().splitlines(keepends=True)
    text[2] = "AAAA\n"
    with pytest.raises(CheckpointError, match="3 bytes, expected 32"):
        Checkpoint.parse("".join(text))


@pytest.fixture
def checkpoint_v2() -> Checkpoint:
    return Checkpoint.sign(
        NodeIdentity.generate(), "ab" * 16, 42, bytes(range(32)), 1_767_225_600_000_000,
        bytes(range(32, 64)),
    )  # fmt: skip


def test_a_format_2_checkpoint_round_trips_and_keeps_witness_lines(checkpoint_v2):
    text = checkpoint_v2.to_text()
    assert text.startswith("l2-session/ledger/" + "ab" * 16 + "\n42\n")
    parsed = Checkpoint.parse(text)
    assert parsed == checkpoint_v2 and parsed.version == 2 and parsed.signature_valid()
    witnessed = text + "\u2014 did:key:z6MkWitness AAAA\n"
    again = Checkpoint.parse(witnessed)
    assert again.cosignatures == ("\u2014 did:key:z6MkWitness AAAA",)
    assert again.to_text() == witnessed and again.signature_valid()
    assert not Checkpoint.parse(text.replace("\n42\n", "\n43\n")).signature_valid()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("head ", "tail "), "head line"),
        (lambda t: t.replace("\ntime ", "\nextra line\ntime "), "3 extension lines"),
        (lambda t: t.replace("\n42\n", "\n042\n"), "leading zero"),
        (lambda t: t.rstrip("\n"), "final newline"),
        (lambda t: t + "not a signature line\n", "malformed"),
    ],
)
def test_malformed_format_2_checkpoints_are_refused_with_the_reason(checkpoint_v2, edit, message):
    with pytest.raises(CheckpointError, match=message):
        Checkpoint.parse(edit(checkpoint_v2.to_text()))
