"""Builds the whole-handshake test vector from its inputs (seeded keys), and renders it as the
worked example of docs/handshake.md. Used by test_handshake_vectors.py; run
``L2S_REGENERATE_VECTORS=1 pytest tests/crypto/test_handshake_vectors.py`` to rewrite both after
a deliberate change of the protocol (and say why in the commit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from l2_session.domain.handshake.bundle import create_prekeys
from l2_session.domain.handshake.channel import Channel, heartbeat
from l2_session.domain.handshake.kem import CryptographyKem
from l2_session.domain.handshake.protocol import InitiatorHandshake, Responder
from l2_session.domain.handshake.resume import (
    ResumeInitiator,
    ResumeResponder,
    ResumptionTicket,
)

REPO = Path(__file__).resolve().parents[2]
VECTOR_FILE = REPO / "tests" / "vectors" / "handshake_v1.json"
DOC_FILE = REPO / "docs" / "handshake.md"
BEGIN, END = "<!-- worked-example:begin -->", "<!-- worked-example:end -->"


def seeded(label: str, n: int = 32) -> str:
    """Test key material, derived in the open from a label: no secret ever sits in the repo."""
    return blake3.blake3(label.encode()).digest(length=n).hex()


def default_inputs() -> dict[str, Any]:
    return {
        "initiator_identity_seed": seeded("l2s vector v1 initiator identity"),
        "responder_identity_seed": seeded("l2s vector v1 responder identity"),
        "signed_prekey_private": seeded("l2s vector v1 signed prekey"),
        "kem_prekey_seed": seeded("l2s vector v1 kem prekey", 64),
        "one_time_prekey_id": 7,
        "one_time_prekey_private": seeded("l2s vector v1 one-time prekey"),
        "initiator_ephemeral_private": seeded("l2s vector v1 initiator ephemeral"),
        "responder_ephemeral_private": seeded("l2s vector v1 responder ephemeral"),
        "signed_prekey_id": 1,
        "kem_prekey_id": 1,
        "now_us": 1_800_000_000_000_000,
        "expires_at_us": 1_800_604_800_000_000,
        "data_payload": b"hello, responder".hex(),
        "heartbeat_sent_at_us": 1_800_000_001_000_000,
        "resume_at_us": 1_800_003_600_000_000,
        "resume_initiator_ephemeral_private": seeded("l2s vector v1 resume initiator ephemeral"),
        "resume_responder_ephemeral_private": seeded("l2s vector v1 resume responder ephemeral"),
    }


class RecordedEncapsulation:
    """ML-KEM encapsulation with its randomness fixed by the vector: neither library takes the
    FIPS 203 message m, so the ciphertext and secret are inputs of the vector (as in
    Wycheproof). The responder still decapsulates the ciphertext for real."""

    name = "recorded"

    def __init__(self, public_key: bytes, ciphertext: bytes, shared: bytes) -> None:
        self.public_key, self.ciphertext, self.shared = public_key, ciphertext, shared

    def encapsulate(self, public_key: bytes) -> tuple[bytes, bytes]:
        assert public_key == self.public_key, "vector encapsulated to another key"
        return self.ciphertext, self.shared


def build(inputs: dict[str, Any]) -> dict[str, str]:
    h = bytes.fromhex
    initiator = Ed25519PrivateKey.from_private_bytes(h(inputs["initiator_identity_seed"]))
    responder_id = Ed25519PrivateKey.from_private_bytes(h(inputs["responder_identity_seed"]))
    kem_key = CryptographyKem().load(h(inputs["kem_prekey_seed"]))
    secrets, bundle = create_prekeys(
        responder_id,
        expires_at_us=inputs["expires_at_us"],
        signed_prekey_id=inputs["signed_prekey_id"],
        kem_prekey_id=inputs["kem_prekey_id"],
        signed_prekey=X25519PrivateKey.from_private_bytes(h(inputs["signed_prekey_private"])),
        kem_prekey=kem_key,
        one_time_prekeys={
            inputs["one_time_prekey_id"]: X25519PrivateKey.from_private_bytes(
                h(inputs["one_time_prekey_private"])
            )
        },
    )
    if "kem_ciphertext" not in inputs:  # first generation: a real, random encapsulation
        ciphertext, shared = CryptographyKem().encapsulate(kem_key.public_bytes)
        inputs["kem_ciphertext"], inputs["kem_shared_secret"] = ciphertext.hex(), shared.hex()
    kem = RecordedEncapsulation(
        kem_key.public_bytes, h(inputs["kem_ciphertext"]), h(inputs["kem_shared_secret"])
    )
    hs, init = InitiatorHandshake.start(
        initiator,
        bundle,
        now_us=inputs["now_us"],
        kem=kem,
        ephemeral=X25519PrivateKey.from_private_bytes(h(inputs["initiator_ephemeral_private"])),
    )
    response, pending = Responder(responder_id, secrets, bundle).receive_init(
        init,
        now_us=inputs["now_us"],
        ephemeral=X25519PrivateKey.from_private_bytes(h(inputs["responder_ephemeral_private"])),
    )
    confirm, keys_i = hs.receive_response(response)
    keys_r = pending.receive_confirm(confirm)
    assert (keys_i.send_key, keys_i.session_id) == (keys_r.receive_key, keys_r.session_id)
    # Resumption an hour later, from the tickets both sides stored.
    at, ticket_r = inputs["resume_at_us"], ResumptionTicket.of(keys_r)
    resumer, resume = ResumeInitiator.start(
        ResumptionTicket.of(keys_i),
        now_us=at,
        ephemeral=X25519PrivateKey.from_private_bytes(
            h(inputs["resume_initiator_ephemeral_private"])
        ),
    )
    responder = ResumeResponder({ticket_r.session_id: ticket_r}.get, ticket_r.prekey_ids)
    resume_response, pending_resume = responder.receive_resume(
        resume,
        now_us=at,
        ephemeral=X25519PrivateKey.from_private_bytes(
            h(inputs["resume_responder_ephemeral_private"])
        ),
    )
    resume_confirm, resumed_i = resumer.receive_response(resume_response)
    assert pending_resume.receive_confirm(resume_confirm).receive_key == resumed_i.send_key
    return {
        "bundle": bundle.encode().hex(),
        "init": init.hex(),
        "response": response.hex(),
        "confirm": confirm.hex(),
        "session_id": keys_i.session_id.hex(),
        "transcript_hash": keys_i.transcript_hash.hex(),
        "key_initiator_to_responder": keys_i.send_key.hex(),
        "key_responder_to_initiator": keys_i.receive_key.hex(),
        "first_data_record": Channel(keys_i).seal(h(inputs["data_payload"])).hex(),
        "first_heartbeat_record": heartbeat(Channel(keys_r), inputs["heartbeat_sent_at_us"]).hex(),
        "resumption_secret": keys_i.resumption_secret.hex(),
        "resume": resume.hex(),
        "resume_response": resume_response.hex(),
        "resume_confirm": resume_confirm.hex(),
        "resumed_key_initiator_to_responder": resumed_i.send_key.hex(),
        "resumed_key_responder_to_initiator": resumed_i.receive_key.hex(),
    }


# Field layouts, as documented; render() checks they add up to each message's real length.
LAYOUTS: dict[str, list[tuple[str, int]]] = {
    "bundle": [
        ("version", 1),
        ("type", 1),
        ("body length", 2),
        ("suite", 1),
        ("identity (Ed25519)", 32),
        ("expires_at_us", 8),
        ("signed prekey id", 4),
        ("signed prekey (X25519)", 32),
        ("kem prekey id", 4),
        ("kem prekey (ML-KEM-768 ek)", 1184),
        ("signature", 64),
        ("one-time prekey count", 1),
        ("one-time prekey id", 4),
        ("one-time prekey (X25519)", 32),
        ("one-time prekey signature", 64),
    ],
    "init": [
        ("version", 1),
        ("type", 1),
        ("body length", 2),
        ("suite", 1),
        ("flags", 1),
        ("initiator identity (Ed25519)", 32),
        ("initiator ephemeral (X25519)", 32),
        ("responder identity (Ed25519)", 32),
        ("signed prekey id", 4),
        ("kem prekey id", 4),
        ("one-time prekey id", 4),
        ("timestamp_us", 8),
        ("kem ciphertext", 1088),
        ("signature", 64),
    ],
    "response": [
        ("version", 1),
        ("type", 1),
        ("body length", 2),
        ("handshake id", 16),
        ("responder ephemeral (X25519)", 32),
        ("signature", 64),
        ("confirm MAC", 32),
    ],
    "confirm": [
        ("version", 1),
        ("type", 1),
        ("body length", 2),
        ("handshake id", 16),
        ("confirm MAC", 32),
    ],
    "first_data_record": [
        ("version", 1),
        ("type", 1),
        ("body length", 2),
        ("counter", 8),
        ("ciphertext", 16),
        ("tag", 16),
    ],
    "resume": [
        ("version", 1),
        ("type", 1),
        ("body length", 2),
        ("session id", 16),
        ("generation", 4),
        ("signed prekey id", 4),
        ("kem prekey id", 4),
        ("ephemeral (X25519)", 32),
        ("timestamp_us", 8),
        ("mac", 32),
    ],
    "resume_response": [
        ("version", 1),
        ("type", 1),
        ("body length", 2),
        ("session id", 16),
        ("ephemeral (X25519)", 32),
        ("mac", 32),
    ],
    "resume_confirm": [
        ("version", 1),
        ("type", 1),
        ("body length", 2),
        ("session id", 16),
        ("mac", 32),
    ],
    "first_heartbeat_record": [
        ("version", 1),
        ("type", 1),
        ("body length", 2),
        ("counter", 8),
        ("ciphertext (sent_at_us)", 8),
        ("tag", 16),
    ],
}


def render(outputs: dict[str, str]) -> str:
    lines = [
        BEGIN,
        "",
        "Produced by `tests/crypto/handshake_vector.py` from "
        "`tests/vectors/handshake_v1.json`; checked by "
        "`test_handshake_vectors.py::test_doc_example_matches_the_code`.",
        "",
    ]
    for name, layout in LAYOUTS.items():
        data = bytes.fromhex(outputs[name])
        assert sum(n for _, n in layout) == len(data), f"{name}: layout != {len(data)} bytes"
        lines += [f"**{name}** ({len(data)} bytes)", "", "```"]
        offset = 0
        for field, n in layout:
            chunk = data[offset : offset + n].hex()
            head = f"{offset:5d}  {field:30s} "
            lines.append(head + chunk[:64])
            lines += [" " * len(head) + chunk[i : i + 64] for i in range(64, len(chunk), 64)]
            offset += n
        lines += ["```", ""]
    lines += ["**derived**", "", "```"]
    lines += [
        f"{k:36s} {outputs[k]}"
        for k in (
            "session_id",
            "transcript_hash",
            "key_initiator_to_responder",
            "key_responder_to_initiator",
            "resumption_secret",
            "resumed_key_initiator_to_responder",
            "resumed_key_responder_to_initiator",
        )
    ]
    lines += ["```", "", END]
    return "\n".join(lines)


def doc_example(text: str) -> str:
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[start:end]
