"""The worked example of docs/ledger-format.md, computed by the code that writes ledgers.

``python -m l2_session.infrastructure.ledger.example`` prints the values; a test checks that
every value in the document equals what this module computes, so the document cannot drift.
Everything is fixed (seeded key, fixed ids, nonce and times): Ed25519 signatures are
deterministic, so the whole example is too.
"""

from __future__ import annotations

from blake3 import blake3
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.ledger.chain import signer_statement
from l2_session.infrastructure.ledger.checkpoint import (
    Checkpoint,
    key_id,
    note_key_id_of,
    verifier_key,
)
from l2_session.infrastructure.ledger.codec import (
    SEALED_MARK,
    CanonicalJSONTranscoder,
    encode_sealed_column,
)
from l2_session.infrastructure.ledger.format import (
    ZERO_HASH,
    event_hash,
    event_hash_input,
    genesis_hash,
    lp,
    sealed_aad,
)
from l2_session.infrastructure.ledger.merkle import inclusion_proof, leaf_hash, root

SEED = bytes(range(32))
LEDGER_ID = "00112233445566778899aabbccddeeff"
SESSION_ID = "5e5510115e5510115e5510115e551011"
STORAGE_KEY = bytes([0x42]) * 32
NONCE = bytes(range(12))
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z in µs


def worked_example() -> dict[str, str]:
    identity = NodeIdentity.from_seed(SEED)
    signer = identity.did
    signer_lp = lp(signer.encode())
    transcoder = CanonicalJSONTranscoder()
    out: dict[str, str] = {
        "seed": SEED.hex(),
        "public_key": identity.public_bytes.hex(),
        "signer": signer,
        "ledger_id": LEDGER_ID,
        "genesis_hash": genesis_hash(LEDGER_ID).hex(),
    }
    sid = SESSION_ID.encode()

    # Event 1: a session opened (no secret fields).
    payload1 = transcoder.encode({"peer": "did:key:z6MkPeer", "purpose": "example"})
    prev_g = genesis_hash(LEDGER_ID)
    args1 = (1, sid, 1, b"example:Opened", T0, payload1, ZERO_HASH, prev_g, signer_lp)
    h1 = event_hash(*args1)
    out |= {
        "event1_payload": payload1.decode(),
        "event1_hash_input": event_hash_input(*args1).hex(),
        "event1_hash": h1.hex(),
        "event1_signature": identity.sign(h1).hex(),
    }

    # Event 2: a key stored; the field `session_key` is sealed.
    secret = bytes(range(0xA0, 0xC0))
    aad = sealed_aad(sid, 2, "session_key")
    blob = NONCE + ChaCha20Poly1305(STORAGE_KEY).encrypt(NONCE, secret, aad)
    digest = blake3(blob).hexdigest()
    payload2 = transcoder.encode({"label": "k", "session_key": {SEALED_MARK: digest}})
    args2 = (2, sid, 2, b"example:KeyStored", T0 + 1_000_000, payload2, h1, h1, signer_lp)
    h2 = event_hash(*args2)
    out |= {
        "sealed_plaintext": secret.hex(),
        "storage_key": STORAGE_KEY.hex(),
        "sealed_nonce": NONCE.hex(),
        "sealed_aad": aad.hex(),
        "sealed_blob": blob.hex(),
        "sealed_digest": digest,
        "sealed_column": encode_sealed_column({"session_key": blob}).decode(),
        "event2_payload": payload2.decode(),
        "event2_hash_input": event_hash_input(*args2).hex(),
        "event2_hash": h2.hex(),
        "event2_signature": identity.sign(h2).hex(),
    }

    # The node's registration as a signer of the ledger (§7), at T0.
    statement = signer_statement(LEDGER_ID, signer, T0)
    out |= {
        "registration_statement": statement.hex(),
        "registration_signature": identity.sign(statement).hex(),
    }

    # The Merkle tree of the two events (§13), a proof, and the checkpoint over its root (§5).
    leaf1, leaf2 = leaf_hash(h1), leaf_hash(h2)
    tree_root = root([leaf1, leaf2])
    checkpoint = Checkpoint.sign(identity, LEDGER_ID, 2, h2, T0 + 2_000_000, tree_root)
    old = Checkpoint.sign(identity, LEDGER_ID, 2, h2, T0 + 2_000_000)
    out |= {
        "leaf1_hash": leaf1.hex(),
        "leaf2_hash": leaf2.hex(),
        "tree_root": tree_root.hex(),
        "inclusion_proof_event1": " ".join(p.hex() for p in inclusion_proof(0, [leaf1, leaf2])),
        "checkpoint_key_id": note_key_id_of(signer).hex(),
        "checkpoint_verifier_key": verifier_key(signer),
        "checkpoint": checkpoint.to_text(),
        "checkpoint_format1_key_id": key_id(signer).hex(),
        "checkpoint_format1": old.to_text(),
    }
    return out


if __name__ == "__main__":
    for name, value in worked_example().items():
        print(f"<!-- example:{name} -->\n```\n{value.rstrip()}\n```\n")
