"""C2SP signed notes (infrastructure/ledger/note.py) against the published example
(../shared/vectors/signed-note, from golang.org/x/mod/sumdb/note): the keys parse, the key id
is the one C2SP defines, signing the text reproduces the note byte for byte, and the note
opens with its verifier — and is refused when its text, signature or key is not the one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from l2_session.infrastructure.ledger.note import NoteError, Signer, Verifier, open_note


@pytest.fixture(scope="module")
def example(shared_vectors: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (shared_vectors / "signed-note" / "go-sumdb-note.json").read_text()
    )
    return data


def test_the_published_note_is_reproduced_byte_for_byte(example: dict[str, Any]) -> None:
    signer = Signer.parse(example["signer_key"])
    verifier = Verifier.parse(example["verifier_key"])
    assert str(signer.verifier) == example["verifier_key"] == str(verifier)
    assert signer.sign(example["text"]) == example["signed_note"]


def test_the_published_note_opens_with_its_verifier(example: dict[str, Any]) -> None:
    verifier = Verifier.parse(example["verifier_key"])
    text, good = open_note(example["signed_note"], [verifier])
    assert text == example["text"] and good == [verifier]


def test_a_changed_text_signature_or_key_is_refused(example: dict[str, Any]) -> None:
    verifier = Verifier.parse(example["verifier_key"])
    note: str = example["signed_note"]
    with pytest.raises(NoteError, match="does not verify"):
        open_note(note.replace("answer", "Answer"), [verifier])
    sig_start = note.rindex(" ") + 10
    flipped = note[:sig_start] + ("A" if note[sig_start] != "A" else "B") + note[sig_start + 1 :]
    with pytest.raises(NoteError):
        open_note(flipped, [verifier])
    other = Signer("PeterNeumann", Ed25519PrivateKey.generate()).verifier
    with pytest.raises(NoteError, match="no signature of a known key"):
        open_note(note, [other])  # same name, another key: another key id


def test_a_note_signed_twice_opens_for_either_and_unknown_signatures_are_skipped() -> None:
    alice = Signer("alice.example", Ed25519PrivateKey.generate())
    bob = Signer("bob.example", Ed25519PrivateKey.generate())
    text = "origin\n42\nroot\n"
    once = alice.sign(text)
    twice = once + bob.sign(text).split("\n\n", 1)[1]
    assert open_note(twice, [bob.verifier])[1] == [bob.verifier]
    assert open_note(twice, [alice.verifier, bob.verifier])[1] == [alice.verifier, bob.verifier]


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key id"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "key name"),
        ("PeterNeumann+c74f20a3+ApdS", "not an Ed25519 key"),
        ("PeterNeumann+c74f20a3+***", "not base64"),
    ],
)
def test_wrong_verifier_keys_are_refused_with_why(key: str, fragment: str) -> None:
    with pytest.raises(NoteError, match=fragment):
        Verifier.parse(key)


@pytest.mark.parametrize("text", ["no newline", "a\n\nblank line\n", "\nleading\n"])
def test_texts_a_note_cannot_carry_are_refused(text: str) -> None:
    with pytest.raises(NoteError):
        Signer("n", Ed25519PrivateKey.generate()).sign(text)
