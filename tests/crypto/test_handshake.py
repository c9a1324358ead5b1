"""The hybrid handshake end to end, with real keys: agreement, authentication, and every way
an attacker in the middle could try to bend it (SPEC-018 §2.1, §7.1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from crypto_support import DAY_US, NOW_US
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from l2_session.domain.handshake.bundle import PrekeyBundle, create_prekeys
from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    HandshakeStateError,
    MalformedMessage,
    PrekeyError,
    ReplayedMessage,
)
from l2_session.domain.handshake.kem import backend
from l2_session.domain.handshake.keys import (
    LABEL_RESPONSE_SIGNATURE,
    transcript_hash,
    x25519_public_bytes,
)
from l2_session.domain.handshake.protocol import InitiatorHandshake, Responder
from l2_session.domain.handshake.wire import Init, Response
from l2_session.domain.session.errors import AuthenticationFailed

Parties = Callable[..., Any]


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _run(parties: Parties, kem_i: str = "pqcrypto", kem_r: str = "pqcrypto", opks: int = 2):
    initiator, responder_key, bundle, responder = parties(kem=kem_r, one_time_prekeys=opks)
    hs, init = InitiatorHandshake.start(
        initiator,
        bundle,
        now_us=NOW_US,
        expected_responder=_public(responder_key),
        kem=backend(kem_i),
    )
    response, pending = responder.receive_init(init, now_us=NOW_US + 1000)
    confirm, keys_i = hs.receive_response(response)
    keys_r = pending.receive_confirm(confirm)
    return initiator, responder_key, keys_i, keys_r, (init, response, confirm)


@pytest.mark.parametrize("kem_i", ["pqcrypto", "cryptography"])
@pytest.mark.parametrize("kem_r", ["pqcrypto", "cryptography"])
@pytest.mark.parametrize("opks", [0, 2])
def test_both_sides_derive_the_same_directional_keys(
    parties: Parties, kem_i: str, kem_r: str, opks: int
) -> None:
    # Encapsulating with one library and decapsulating with the other, both ways, must agree.
    initiator, responder_key, keys_i, keys_r, _ = _run(parties, kem_i, kem_r, opks)
    assert keys_i.send_key == keys_r.receive_key
    assert keys_i.receive_key == keys_r.send_key
    assert keys_i.send_key != keys_i.receive_key  # one key per direction
    assert keys_i.session_id == keys_r.session_id
    assert keys_i.transcript_hash == keys_r.transcript_hash
    assert keys_i.peer_identity == _public(responder_key)
    assert keys_r.peer_identity == _public(initiator)
    assert (keys_i.is_initiator, keys_r.is_initiator) == (True, False)


def test_two_handshakes_give_unrelated_keys(parties: Parties) -> None:
    _, _, a, _, _ = _run(parties)
    _, _, b, _, _ = _run(parties)
    assert {a.send_key, a.receive_key}.isdisjoint({b.send_key, b.receive_key})


def test_message_sizes_are_fixed(parties: Parties) -> None:
    *_, (init, response, confirm) = _run(parties)
    assert (len(init), len(response), len(confirm)) == (1274, 148, 52)


def test_one_time_prekey_is_spent_once(parties: Parties) -> None:
    initiator, _, bundle, responder = parties(one_time_prekeys=1)
    _, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    responder.receive_init(init, now_us=NOW_US)
    assert dict(responder.secrets.one_time_prekeys) == {}
    # A second initiator with the same (stale) bundle names the spent prekey: refused.
    _, again = InitiatorHandshake.start(Ed25519PrivateKey.generate(), bundle, now_us=NOW_US)
    with pytest.raises(PrekeyError, match="one-time prekey 1"):
        responder.receive_init(again, now_us=NOW_US)


# --- authentication ---------------------------------------------------------------------------


def test_bundle_of_another_identity_is_refused(parties: Parties) -> None:
    # The DID names the responder's key; a directory serving someone else's bundle is caught.
    initiator, _, bundle, _ = parties()
    with pytest.raises(HandshakeAuthenticationFailed, match="not the expected"):
        InitiatorHandshake.start(
            initiator,
            bundle,
            now_us=NOW_US,
            expected_responder=_public(Ed25519PrivateKey.generate()),
        )


def test_bundle_with_swapped_prekey_fails_its_signature(parties: Parties) -> None:
    initiator, responder_key, bundle, _ = parties()
    forged = replace(
        bundle,
        signed_prekey=X25519PrivateKey.generate()
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw),
    )
    with pytest.raises(HandshakeAuthenticationFailed, match="prekey bundle"):
        InitiatorHandshake.start(
            initiator, forged, now_us=NOW_US, expected_responder=_public(responder_key)
        )


def test_bundle_with_swapped_kem_prekey_fails_its_signature(parties: Parties) -> None:
    initiator, _, bundle, _ = parties()
    forged = replace(bundle, kem_prekey=backend("pqcrypto").generate().public_bytes)
    with pytest.raises(HandshakeAuthenticationFailed):
        InitiatorHandshake.start(initiator, forged, now_us=NOW_US)


def test_expired_bundle_is_refused(parties: Parties) -> None:
    initiator, _, bundle, _ = parties()
    with pytest.raises(PrekeyError, match="expired"):
        InitiatorHandshake.start(initiator, bundle, now_us=bundle.expires_at_us)


def test_init_signed_by_someone_else_is_refused(parties: Parties) -> None:
    # An attacker puts the victim's identity in INIT but can only sign with its own key.
    initiator, _, bundle, responder = parties()
    _, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    parsed = Init.parse(init)
    impostor = replace(parsed, initiator_identity=_public(Ed25519PrivateKey.generate()))
    with pytest.raises(AuthenticationFailed, match="INIT: signature"):
        responder.receive_init(impostor.encode(), now_us=NOW_US)
    assert len(responder.replay_cache) == 0  # nothing remembered from a forged INIT
    assert set(responder.secrets.one_time_prekeys) == {1, 2}  # no prekey burnt


def test_response_signed_by_an_impostor_is_refused(parties: Parties) -> None:
    # A MITM can compute the public transcript hash th2 and sign it correctly with its own key;
    # the initiator checks the signature against the identity the DID names, and refuses.
    initiator, responder_key, bundle, _ = parties()
    hs, init = InitiatorHandshake.start(
        initiator, bundle, now_us=NOW_US, expected_responder=_public(responder_key)
    )
    parsed = Init.parse(init)
    th1 = transcript_hash(
        bundle.signed_part(), bundle.one_time_prekeys[0].public, parsed.signed_part()
    )
    unsigned = Response(th1[:16], x25519_public_bytes(X25519PrivateKey.generate()), b"", b"")
    th2 = transcript_hash(th1, parsed.signature, unsigned.signed_part())
    mitm = Ed25519PrivateKey.generate()
    forged = replace(
        unsigned, signature=mitm.sign(LABEL_RESPONSE_SIGNATURE + th2), confirm=bytes(32)
    )
    with pytest.raises(HandshakeAuthenticationFailed, match="RESPONSE: signature"):
        hs.receive_response(forged.encode())


def test_stripping_or_replacing_the_kem_ciphertext_fails(parties: Parties) -> None:
    # The ciphertext is in th1 (signed) and its secret in the keys: a new encapsulation by an
    # attacker to the same prekey breaks the initiator's signature.
    initiator, _, bundle, responder = parties()
    _, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    other, _ = backend("pqcrypto").encapsulate(bundle.kem_prekey)
    swapped = replace(Init.parse(init), kem_ciphertext=other)
    with pytest.raises(HandshakeAuthenticationFailed):
        responder.receive_init(swapped.encode(), now_us=NOW_US)


@pytest.mark.parametrize("field", ["responder_ephemeral", "signature", "confirm"])
def test_altered_response_fails_and_ends_the_handshake(parties: Parties, field: str) -> None:
    initiator, _, bundle, responder = parties()
    hs, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    response, _ = responder.receive_init(init, now_us=NOW_US)
    parsed = Response.parse(response)
    value = bytearray(getattr(parsed, field))
    value[-1] ^= 0x01
    with pytest.raises(HandshakeAuthenticationFailed):
        hs.receive_response(replace(parsed, **{field: bytes(value)}).encode())
    with pytest.raises(HandshakeStateError):
        hs.receive_response(response)  # a failed handshake does not resume (SPEC-018 §2.1)


def test_altered_confirm_fails(parties: Parties) -> None:
    initiator, _, bundle, responder = parties()
    hs, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    response, pending = responder.receive_init(init, now_us=NOW_US)
    confirm, _ = hs.receive_response(response)
    bad = confirm[:-1] + bytes([confirm[-1] ^ 0x80])
    with pytest.raises(HandshakeAuthenticationFailed, match="CONFIRM"):
        pending.receive_confirm(bad)


def test_message_for_another_handshake_changes_nothing(parties: Parties) -> None:
    # A stray RESPONSE (other handshake id) is malformed for this handshake: dropped, and the
    # genuine response still completes it.
    initiator, _, bundle, responder = parties()
    hs, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    response, pending = responder.receive_init(init, now_us=NOW_US)
    stray = replace(Response.parse(response), handshake_id=bytes(16))
    with pytest.raises(MalformedMessage, match="RESPONSE for 0000"):
        hs.receive_response(stray.encode())
    confirm, _ = hs.receive_response(response)
    pending.receive_confirm(confirm)


def test_low_order_ephemeral_in_response_is_refused(parties: Parties) -> None:
    initiator, _, bundle, responder = parties()
    hs, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    response, _ = responder.receive_init(init, now_us=NOW_US)
    zero_point = replace(Response.parse(response), responder_ephemeral=bytes(32))
    with pytest.raises(HandshakeAuthenticationFailed, match="low order"):
        hs.receive_response(zero_point.encode())


# --- replays ------------------------------------------------------------------------------------


def test_replayed_init_is_refused(parties: Parties) -> None:
    initiator, _, bundle, responder = parties(one_time_prekeys=0)
    _, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    responder.receive_init(init, now_us=NOW_US)
    with pytest.raises(ReplayedMessage, match="already accepted"):
        responder.receive_init(init, now_us=NOW_US + 1_000_000)


def test_stale_or_future_init_is_refused(parties: Parties) -> None:
    initiator, _, bundle, responder = parties(one_time_prekeys=0)
    _, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    late = NOW_US + responder.max_skew_us + 1
    with pytest.raises(ReplayedMessage, match="from this node's clock"):
        responder.receive_init(init, now_us=late)
    with pytest.raises(ReplayedMessage):
        responder.receive_init(init, now_us=NOW_US - responder.max_skew_us - 1)


def test_replay_after_the_window_is_refused_as_stale_not_forgotten(parties: Parties) -> None:
    # The cache forgets an ephemeral only once its timestamp is outside the window, so a replay
    # is always caught by one check or the other.
    initiator, _, bundle, responder = parties(one_time_prekeys=0)
    _, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    responder.receive_init(init, now_us=NOW_US)
    edge = NOW_US + responder.max_skew_us
    for at in (edge - 1, edge):  # the last instants the timestamp check still lets it pass
        with pytest.raises(ReplayedMessage, match="already accepted"):
            responder.receive_init(init, now_us=at)
    with pytest.raises(ReplayedMessage, match="clock"):
        responder.receive_init(init, now_us=edge + 1)


def test_replayed_init_to_a_restarted_responder_cannot_be_completed(parties: Parties) -> None:
    # Even where the replay cache is gone (a restart), the responder's fresh ephemeral makes the
    # keys differ from the original session's: the attacker's copy of the old CONFIRM fails.
    initiator, responder_key, bundle, responder = parties(one_time_prekeys=0)
    hs, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    response, _ = responder.receive_init(init, now_us=NOW_US)
    old_confirm, _ = hs.receive_response(response)
    restarted = Responder(responder_key, responder.secrets, bundle)
    _, pending = restarted.receive_init(init, now_us=NOW_US)
    with pytest.raises(HandshakeAuthenticationFailed):
        pending.receive_confirm(old_confirm)


def test_init_for_old_prekeys_asks_for_a_refetch(parties: Parties) -> None:
    initiator, responder_key, bundle, _ = parties(one_time_prekeys=0)
    secrets, newer = create_prekeys(
        responder_key, expires_at_us=NOW_US + DAY_US, signed_prekey_id=2, kem_prekey_id=2
    )
    rotated = Responder(responder_key, secrets, newer)
    _, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    with pytest.raises(PrekeyError, match="refetch"):
        rotated.receive_init(init, now_us=NOW_US)


def test_init_addressed_to_another_node_is_refused(parties: Parties) -> None:
    initiator, _, bundle, _ = parties()
    _, _, _, other = parties()
    _, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    with pytest.raises(HandshakeAuthenticationFailed, match="addressed"):
        other.receive_init(init, now_us=NOW_US)


def test_responder_refuses_a_bundle_not_its_own() -> None:
    me, someone = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    secrets, bundle = create_prekeys(someone, expires_at_us=NOW_US + DAY_US)
    with pytest.raises(PrekeyError):
        Responder(me, secrets, bundle)


def test_bundle_survives_the_wire(parties: Parties) -> None:
    _, _, bundle, _ = parties(one_time_prekeys=3)
    assert PrekeyBundle.parse(bundle.encode()) == bundle


def test_keys_depend_on_the_kem_secret(parties: Parties) -> None:
    # If the responder's ML-KEM secret differed from the initiator's (as if the KEM part were
    # dropped or broken), the key confirmation must fail: the KEM secret is in the keys.
    initiator, _, bundle, responder = parties()

    class WrongSecret:
        public_bytes = responder.secrets.kem_prekey.public_bytes

        def stored_bytes(self) -> bytes:
            return b""

        def decapsulate(self, ciphertext: bytes) -> bytes:
            return bytes(32)

    responder.secrets = replace(responder.secrets, kem_prekey=WrongSecret())
    hs, init = InitiatorHandshake.start(initiator, bundle, now_us=NOW_US)
    response, _ = responder.receive_init(init, now_us=NOW_US)
    with pytest.raises(HandshakeAuthenticationFailed, match="confirmation MAC"):
        hs.receive_response(response)
