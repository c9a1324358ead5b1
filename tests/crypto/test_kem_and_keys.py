"""The ML-KEM backends against each other, and the Ed25519 -> X25519 identity key map."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st
from l2_session.domain.handshake.errors import HandshakeAuthenticationFailed, PrekeyError
from l2_session.domain.handshake.kem import (
    DEFAULT_BACKEND,
    EXPANDED_PRIVATE_LEN,
    SEED_LEN,
    backend,
    load_private,
)
from l2_session.domain.handshake.keys import (
    dh,
    ed25519_private_to_x25519,
    ed25519_public_to_x25519,
    x25519_public_bytes,
)

NAMES = ["pqcrypto", "cryptography"]


def test_pqcrypto_is_the_default_backend() -> None:
    assert DEFAULT_BACKEND.name == "pqcrypto"  # the design card's choice


@pytest.mark.parametrize("keygen", NAMES)
@pytest.mark.parametrize("encaps", NAMES)
def test_backends_interoperate_both_directions(keygen: str, encaps: str) -> None:
    for _ in range(5):
        private = backend(keygen).generate()
        ciphertext, shared = backend(encaps).encapsulate(private.public_bytes)
        assert private.decapsulate(ciphertext) == shared
        # ...and the stored form reloads into a key that opens the same ciphertext.
        assert load_private(private.stored_bytes()).decapsulate(ciphertext) == shared


def test_stored_forms_differ_by_backend_and_are_refused_by_the_other() -> None:
    pq, cr = backend("pqcrypto"), backend("cryptography")
    assert len(pq.generate().stored_bytes()) == EXPANDED_PRIVATE_LEN
    assert len(cr.generate().stored_bytes()) == SEED_LEN
    with pytest.raises(PrekeyError, match="expanded"):
        pq.load(cr.generate().stored_bytes())
    with pytest.raises(PrekeyError, match="seed"):
        cr.load(pq.generate().stored_bytes())


def test_unknown_backend_name_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="choose one of cryptography, pqcrypto"):
        backend("liboqs")


@pytest.mark.parametrize("name", NAMES)
def test_bad_public_key_and_ciphertext_are_authentication_failures(name: str) -> None:
    kem = backend(name)
    with pytest.raises(HandshakeAuthenticationFailed, match="encapsulation key refused"):
        kem.encapsulate(bytes(1183))
    # Coefficients >= q (0xFFF in every 12-bit slot): FIPS 203 §7.2's modulus check.
    with pytest.raises(HandshakeAuthenticationFailed):
        kem.encapsulate(b"\xff" * 1184)
    with pytest.raises(HandshakeAuthenticationFailed, match="ciphertext refused"):
        kem.generate().decapsulate(bytes(1087))


@settings(max_examples=50, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_identity_key_map_agrees_with_x25519_scalar_multiplication(seed: bytes) -> None:
    # Two independent paths to the same point: our birational map of the Ed25519 public key,
    # and the X25519 base-point multiplication of the converted private scalar.
    identity = Ed25519PrivateKey.from_private_bytes(seed)
    public = identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert ed25519_public_to_x25519(public) == x25519_public_bytes(
        ed25519_private_to_x25519(identity)
    )


def test_identity_dh_agrees_between_two_converted_keys() -> None:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pa = ed25519_public_to_x25519(a.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    pb = ed25519_public_to_x25519(b.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    assert dh(ed25519_private_to_x25519(a), pb, "t") == dh(ed25519_private_to_x25519(b), pa, "t")


def test_identity_key_map_refuses_unusable_points() -> None:
    neutral = (1).to_bytes(32, "little")
    with pytest.raises(HandshakeAuthenticationFailed, match="neutral"):
        ed25519_public_to_x25519(neutral)
    non_canonical = (2**255 - 19 + 1).to_bytes(32, "little")
    with pytest.raises(HandshakeAuthenticationFailed, match="canonical"):
        ed25519_public_to_x25519(non_canonical)
    with pytest.raises(HandshakeAuthenticationFailed, match="31 bytes"):
        ed25519_public_to_x25519(bytes(31))


def test_dh_refuses_low_order_points() -> None:
    private = ed25519_private_to_x25519(Ed25519PrivateKey.generate())
    for low_order in (bytes(32), (1).to_bytes(32, "little")):
        with pytest.raises(HandshakeAuthenticationFailed, match="low order"):
            dh(private, low_order, "DH")
