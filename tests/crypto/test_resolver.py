"""DID resolution, bundle publication and fetching, and a handshake between two nodes that
find each other only through the resolver (SPEC-018 §2.1 "a discovered peer with valid DID")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from uuid import uuid4

import pytest
from crypto_support import DAY_US, NOW_US
from l2_session.domain.handshake import bundle as bundle_module
from l2_session.domain.handshake.bundle import create_prekeys
from l2_session.domain.handshake.errors import HandshakeAuthenticationFailed, PrekeyError
from l2_session.domain.handshake.protocol import InitiatorHandshake, Responder
from l2_session.domain.manager.pqxdh import PqxdhKeyExchange
from l2_session.infrastructure.identity import DIDError, NodeIdentity
from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.resolver import DidKeyResolver, MockResolver, ResolutionError


def _publish(resolver, identity: NodeIdentity, opks=(1, 2)):  # type: ignore[no-untyped-def]
    secrets, bundle = create_prekeys(
        identity.private_key, expires_at_us=NOW_US + DAY_US, one_time_prekey_ids=opks
    )
    resolver.publish_bundle(identity.did, bundle.encode(), NOW_US)
    return secrets, bundle


def test_did_key_resolves_to_its_key() -> None:
    node = NodeIdentity.generate()
    assert DidKeyResolver().resolve(node.did).identity_key == node.public_bytes


@pytest.mark.parametrize(
    ("did", "message"),
    [
        ("not-a-did", "not a DID"),
        ("did:web:example.com", "unsupported DID method 'web'"),
        ("did:key:z6LSbysY2xFMRpGMhb7tFTLMpeuPRaqaWM1yECx2AtzE3KCc", "not an Ed25519 key"),
        ("did:key:zInvalid0", "invalid base58btc character"),
    ],
)
def test_bad_dids_are_clear_errors(did: str, message: str) -> None:
    with pytest.raises(DIDError, match=message):
        DidKeyResolver().resolve(did)


def test_only_the_dids_owner_can_publish() -> None:
    resolver = DidKeyResolver()
    alice, mallory = NodeIdentity.generate(), NodeIdentity.generate()
    _, bundle = create_prekeys(mallory.private_key, expires_at_us=NOW_US + DAY_US)
    with pytest.raises(HandshakeAuthenticationFailed, match="not the expected"):
        resolver.publish_bundle(alice.did, bundle.encode(), NOW_US)


def test_each_fetch_gets_at_most_one_one_time_prekey_and_spends_it() -> None:
    resolver = DidKeyResolver()
    bob = NodeIdentity.generate()
    _publish(resolver, bob, opks=(1, 2))
    ids = [
        [o.prekey_id for o in resolver.fetch_bundle(bob.did, NOW_US).one_time_prekeys]
        for _ in range(3)
    ]
    assert ids == [[1], [2], []]


def test_expired_bundle_is_not_served() -> None:
    resolver = DidKeyResolver()
    bob = NodeIdentity.generate()
    _publish(resolver, bob)
    with pytest.raises(PrekeyError, match="expired"):
        resolver.fetch_bundle(bob.did, NOW_US + DAY_US)


def test_unknown_did_has_no_bundle() -> None:
    with pytest.raises(ResolutionError, match="no prekey bundle"):
        DidKeyResolver().fetch_bundle(NodeIdentity.generate().did, NOW_US)


def test_mock_resolver_documents_and_failures() -> None:
    bob = NodeIdentity.generate()
    resolver = MockResolver()
    did = resolver.add(bob.public_bytes, "did:example:bob")
    assert resolver.resolve(did).identity_key == bob.public_bytes
    with pytest.raises(ResolutionError, match="no DID document"):
        resolver.resolve("did:example:carol")
    resolver.unreachable = True
    with pytest.raises(ResolutionError, match="unreachable"):
        resolver.resolve(did)


def test_mock_resolver_serving_the_wrong_key_is_caught() -> None:
    # A resolver that maps Bob's DID to Mallory's key cannot get Bob's bundle accepted.
    bob, mallory = NodeIdentity.generate(), NodeIdentity.generate()
    resolver = MockResolver({bob.did: mallory.public_bytes})
    _, bundle = create_prekeys(bob.private_key, expires_at_us=NOW_US + DAY_US)
    with pytest.raises(HandshakeAuthenticationFailed):
        resolver.publish_bundle(bob.did, bundle.encode(), NOW_US)


def test_two_nodes_with_key_stores_handshake_through_the_resolver(tmp_path: Path) -> None:
    resolver = DidKeyResolver()
    alice = KeyStore.create(tmp_path / "alice.keys")
    bob = KeyStore.create(tmp_path / "bob.keys")
    secrets, bundle = _publish(resolver, bob.identity, opks=(1,))
    bob.set_prekeys(secrets)

    # Alice knows only Bob's DID.
    fetched = resolver.fetch_bundle(bob.identity.did, NOW_US)
    expected = resolver.resolve(bob.identity.did).identity_key
    hs, init = InitiatorHandshake.start(
        alice.identity.private_key, fetched, now_us=NOW_US, expected_responder=expected
    )

    # Bob restarts from his key store before answering.
    bob = KeyStore.load(bob.path)
    assert bob.prekeys is not None
    responder = Responder(bob.identity.private_key, bob.prekeys, bundle)
    response, pending = responder.receive_init(init, now_us=NOW_US)
    bob.set_prekeys(responder.secrets)  # the spent one-time prekey is gone for good
    confirm, keys_a = hs.receive_response(response)
    keys_b = pending.receive_confirm(confirm)
    assert keys_a.send_key == keys_b.receive_key
    assert resolver.resolve(bob.identity.did).identity_key == keys_a.peer_identity
    assert KeyStore.load(bob.path).prekeys.one_time_prekeys == {}  # type: ignore[union-attr]


def test_a_corrupted_directory_entry_is_served_but_refused_by_the_handshake() -> None:
    # fetch_bundle checks owner and expiry only; the signature is the handshake's to check,
    # once, before any use of the prekeys.
    resolver = DidKeyResolver()
    alice, bob = NodeIdentity.generate(), NodeIdentity.generate()
    _, bundle = _publish(resolver, bob, opks=())
    forged = replace(bundle, signed_prekey=bytes(32 * [7]))  # swapped prekey, old signature
    resolver.directory.put(bob.did, forged)
    fetched = resolver.fetch_bundle(bob.did, NOW_US)
    with pytest.raises(HandshakeAuthenticationFailed, match="prekey bundle"):
        InitiatorHandshake.start(
            alice.private_key, fetched, now_us=NOW_US, expected_responder=bob.public_bytes
        )


def test_an_initiated_handshake_verifies_the_bundle_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The benchmark's crypto floor counts one bundle verification per handshake; the
    # resolver used to verify a second time on the way out.
    resolver = DidKeyResolver()
    alice, bob = NodeIdentity.generate(), NodeIdentity.generate()
    PqxdhKeyExchange.for_node(
        bob.did, bob.private_key, resolver, now_us=NOW_US, valid_for_us=DAY_US,
        one_time_prekeys=0,
    )  # fmt: skip
    exchange = PqxdhKeyExchange.for_node(
        alice.did, alice.private_key, resolver, now_us=NOW_US, valid_for_us=DAY_US
    )
    checked: list[str] = []
    real = bundle_module.check_signature

    def counting(public: bytes, signature: bytes, message: bytes, what: str) -> None:
        checked.append(what)
        real(public, signature, message, what)

    monkeypatch.setattr(bundle_module, "check_signature", counting)
    exchange.initiate(uuid4(), bob.did, NOW_US)
    assert checked == ["prekey bundle"]
