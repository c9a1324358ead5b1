"""The other inputs from outside: DIDs and key store files. Random and mutated input gets the
module's own clear error, never a stray exception."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from l2_session.infrastructure.identity import DIDError, NodeIdentity, public_bytes_from_did_key
from l2_session.infrastructure.keystore import KeyStore, KeyStoreError, _checksum

_DID = NodeIdentity.from_seed(bytes(32)).did


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(max_size=80),
        st.text(max_size=60).map(lambda t: "did:key:z" + t),
        st.integers(0, len(_DID) - 1).flatmap(
            lambda i: st.characters().map(lambda c: _DID[:i] + c + _DID[i + 1 :])
        ),
    )
)
def test_did_parsing_random_and_mutated(text: str) -> None:
    try:
        key = public_bytes_from_did_key(text)
    except DIDError:
        return
    assert len(key) == 32  # accepted: a 32-byte Ed25519 key named by an ed01 did:key


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_key_store_random_and_mutated(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "node.keys"
    if not path.exists():
        KeyStore.create(path)
    good = path.read_bytes()
    document = json.loads(good)
    choice = data.draw(st.sampled_from(["bytes", "flip", "field"]))
    if choice == "bytes":
        mutated = data.draw(st.binary(max_size=400))
    elif choice == "flip":
        i = data.draw(st.integers(0, len(good) - 1))
        mutated = good[:i] + bytes([good[i] ^ data.draw(st.integers(1, 255))]) + good[i + 1 :]
    else:
        field = data.draw(st.sampled_from(sorted(document["content"])))
        document["content"][field] = data.draw(st.one_of(st.none(), st.integers(), st.text()))
        # Re-checksummed, so the field checks themselves are exercised, not only the checksum.
        document["checksum"] = _checksum(document["content"])
        mutated = json.dumps(document).encode()
    bad = tmp_path / "mutated.keys"
    bad.write_bytes(mutated)
    bad.chmod(0o600)
    try:
        KeyStore.load(bad)
    except KeyStoreError:
        pass
    else:
        assert json.loads(mutated)["content"] == json.loads(good)["content"]
