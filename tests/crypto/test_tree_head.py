"""Signed tree heads as C2SP writes them (infrastructure/ledger/tree_head.py): the
tlog-checkpoint body, byte-exact both ways (the specification's own example among them), a
checkpoint signed and opened as a signed note, and witness cosignatures (tlog-cosignature)
that verify only for their body, their time and their witness."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from l2_session.infrastructure.ledger.merkle import leaf_hash, root
from l2_session.infrastructure.ledger.note import Signer, open_note
from l2_session.infrastructure.ledger.tree_head import (
    TreeHead,
    TreeHeadError,
    cosign,
    verify_cosignature,
)

# c2sp.org/tlog-checkpoint's example body.
SPEC_EXAMPLE = (
    "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)


def test_the_specifications_example_parses_and_is_written_back_exactly() -> None:
    head = TreeHead.parse(SPEC_EXAMPLE)
    assert head.origin == "example.com/behind-the-sofa" and head.size == 20852163
    assert head.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert head.text() == SPEC_EXAMPLE


def test_extension_lines_are_kept_in_order() -> None:
    head = TreeHead("l2s.example/ledger", 7, bytes(32), ("head abc", "time 123"))
    assert TreeHead.parse(head.text()) == head
    assert head.text().endswith("head abc\ntime 123\n")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("origin\n7\n", "three non-empty lines"),
        ("origin\n07\n" + base64.b64encode(bytes(32)).decode() + "\n", "leading zero"),
        ("origin\n-7\n" + base64.b64encode(bytes(32)).decode() + "\n", "decimal digits"),
        ("origin\n7\n" + base64.b64encode(bytes(31)).decode() + "\n", "31 bytes"),
        ("origin\n7\nnot base64!\n", "not base64"),
        ("origin\n7\n" + base64.b64encode(bytes(32)).decode(), "ends with a newline"),
        ("origin\n7\n" + base64.b64encode(bytes(32)).decode() + "\n\nx\n", "non-empty"),
    ],
)
def test_malformed_bodies_are_refused_with_why(text: str, fragment: str) -> None:
    with pytest.raises(TreeHeadError, match=fragment):
        TreeHead.parse(text)


def test_a_checkpoint_of_a_tree_is_signed_and_opened_as_a_note() -> None:
    leaves = [leaf_hash(b"event %d" % n) for n in range(10)]
    head = TreeHead("l2s.example/ledger", 10, root(leaves))
    signer = Signer("l2s.example/ledger", Ed25519PrivateKey.generate())
    text, good = open_note(signer.sign(head.text()), [signer.verifier])
    assert TreeHead.parse(text) == head and good == [signer.verifier]


def test_a_cosignature_verifies_only_for_its_body_time_and_witness() -> None:
    witness = Ed25519PrivateKey.generate()
    line = cosign("witness.example", witness, SPEC_EXAMPLE, 1_767_225_600)
    assert line.startswith("\u2014 witness.example ")
    payload = base64.b64decode(line.split(" ")[-1])
    assert len(payload) == 76 and payload[4:12] == (1_767_225_600).to_bytes(8, "big")
    public = witness.public_key()
    assert verify_cosignature("witness.example", public, SPEC_EXAMPLE, line) == 1_767_225_600
    other_body = SPEC_EXAMPLE.replace("20852163", "20852164")
    with pytest.raises(TreeHeadError, match="does not verify"):
        verify_cosignature("witness.example", public, other_body, line)
    later = base64.b64encode(payload[:4] + (1_767_225_601).to_bytes(8, "big") + payload[12:])
    with pytest.raises(TreeHeadError, match="does not verify"):
        verify_cosignature("witness.example", public, SPEC_EXAMPLE,
                           f"\u2014 witness.example {later.decode()}\n")  # fmt: skip
    with pytest.raises(TreeHeadError, match="not by"):
        verify_cosignature("other.example", public, SPEC_EXAMPLE, line)
    with pytest.raises(TreeHeadError, match="key"):
        verify_cosignature(
            "witness.example", Ed25519PrivateKey.generate().public_key(), SPEC_EXAMPLE, line
        )


def test_the_specifications_example_cosignature_has_the_layout_read_here() -> None:
    """c2sp.org/tlog-cosignature's example line (its witness key is not published, so it
    cannot be verified): key id, then an 8-byte big-endian timestamp, then the signature."""
    line = (
        "jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZ"
        "qhf5nNo0xUe+mbIUBkBIfZ+qnA=="
    )
    payload = base64.b64decode(line)
    assert len(payload) == 4 + 8 + 64
    assert int.from_bytes(payload[4:12], "big") == 1679315147  # 2023-03-20, as the spec shows
