"""The node key store: owner-only, atomic, and loud about anything wrong with the file."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from crypto_support import DAY_US, NOW_US
from l2_session.domain.handshake.bundle import create_prekeys
from l2_session.domain.handshake.kem import backend
from l2_session.infrastructure.identity import NodeIdentity
from l2_session.infrastructure.keystore import KeyStore, KeyStoreError


def test_created_owner_only_and_reloads_the_same_keys(tmp_path: Path) -> None:
    path = tmp_path / "node.keys"
    store = KeyStore.create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = KeyStore.load(path)
    assert again.identity.did == store.identity.did
    assert again.storage_key == store.storage_key and len(again.storage_key) == 32
    assert again.prekeys is None


def test_permissions_are_0600_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        KeyStore.create(tmp_path / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_never_overwrites_an_existing_store(tmp_path: Path) -> None:
    KeyStore.create(tmp_path / "k")
    with pytest.raises(KeyStoreError, match="already exists"):
        KeyStore.create(tmp_path / "k")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_readable_by_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "k"
    KeyStore.create(path)
    path.chmod(mode)
    with pytest.raises(KeyStoreError, match=f"permissions {mode:04o}.*chmod 600"):
        KeyStore.load(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="no key store"):
        KeyStore.load(tmp_path / "absent")


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "not json",
        lambda text: text.replace('"storage_key": "', '"storage_key": "00', 1),  # edited
        lambda text: json.dumps({"content": {"format": "x"}}),  # no checksum
    ],
)
def test_corrupt_file_is_refused(tmp_path: Path, corrupt) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "k"
    KeyStore.create(path)
    path.write_text(corrupt(path.read_text()))
    path.chmod(0o600)
    with pytest.raises(KeyStoreError):
        KeyStore.load(path)


def test_no_temporary_files_left_behind(tmp_path: Path) -> None:
    store = KeyStore.create(tmp_path / "k")
    store.save()
    assert [p.name for p in tmp_path.iterdir()] == ["k"]


@pytest.mark.parametrize("kem", ["pqcrypto", "cryptography"])
def test_prekeys_survive_a_reload(tmp_path: Path, kem: str) -> None:
    store = KeyStore.create(tmp_path / "k", identity=NodeIdentity.generate())
    secrets, bundle = create_prekeys(
        store.identity.private_key,
        expires_at_us=NOW_US + DAY_US,
        one_time_prekey_ids=(1, 2),
        kem=backend(kem),
    )
    store.set_prekeys(secrets)
    loaded = KeyStore.load(tmp_path / "k").prekeys
    assert loaded is not None
    assert loaded.kem_prekey.public_bytes == bundle.kem_prekey
    assert sorted(loaded.one_time_prekeys) == [1, 2]
    ciphertext, shared = backend("pqcrypto").encapsulate(bundle.kem_prekey)
    assert loaded.kem_prekey.decapsulate(ciphertext) == shared


def test_given_keys_are_kept(tmp_path: Path) -> None:
    identity = NodeIdentity.from_seed(bytes(range(32)))
    store = KeyStore.create(tmp_path / "k", identity=identity, storage_key=bytes(32))
    assert KeyStore.load(store.path).identity.did == identity.did
    with pytest.raises(KeyStoreError, match="32 bytes"):
        KeyStore.create(tmp_path / "k2", storage_key=bytes(16))
