"""The node's key store: one file holding the Ed25519 identity, the ledger's 32-byte storage
key, and (once published) the private halves of the node's prekeys.

The file is JSON with a BLAKE3 checksum over its content, written atomically (temporary file in
the same directory, fsync, rename, fsync of the directory) with owner-only permissions (0600)
from the moment it exists. Loading refuses a file that others can read or write, or that is
owned by another user, and names what is wrong and how to fix it. The keys are not encrypted
at rest: the file's permissions are the protection (see docs/security.md).
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from l2_session.domain.handshake.bundle import PrekeySecrets
from l2_session.domain.handshake.kem import load_private
from l2_session.infrastructure.identity import NodeIdentity

FORMAT = "l2-session key store v1"
STORAGE_KEY_SIZE = 32


class KeyStoreError(Exception):
    """The key store cannot be used as it is; the message says why and what to do."""


def _raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _checksum(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    context = "l2-session 2026-11 key store v1 checksum"
    return blake3.blake3(canonical, derive_key_context=context).hexdigest()


def _prekeys_to_json(p: PrekeySecrets) -> dict[str, Any]:
    return {
        "signed_prekey_id": p.signed_prekey_id,
        "signed_prekey": _raw(p.signed_prekey).hex(),
        "kem_prekey_id": p.kem_prekey_id,
        "kem_prekey": p.kem_prekey.stored_bytes().hex(),
        "expires_at_us": p.expires_at_us,
        "one_time_prekeys": {str(k): _raw(v).hex() for k, v in p.one_time_prekeys.items()},
    }


def _prekeys_from_json(d: dict[str, Any]) -> PrekeySecrets:
    return PrekeySecrets(
        signed_prekey_id=int(d["signed_prekey_id"]),
        signed_prekey=X25519PrivateKey.from_private_bytes(bytes.fromhex(d["signed_prekey"])),
        kem_prekey_id=int(d["kem_prekey_id"]),
        kem_prekey=load_private(bytes.fromhex(d["kem_prekey"])),
        expires_at_us=int(d["expires_at_us"]),
        one_time_prekeys={
            int(k): X25519PrivateKey.from_private_bytes(bytes.fromhex(v))
            for k, v in d["one_time_prekeys"].items()
        },
    )


@dataclass
class KeyStore:
    path: Path
    identity: NodeIdentity
    storage_key: bytes = field(repr=False)
    prekeys: PrekeySecrets | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        identity: NodeIdentity | None = None,
        storage_key: bytes | None = None,
    ) -> KeyStore:
        """A new key store at ``path`` with fresh (or given) keys; never overwrites a file."""
        path = Path(path)
        if path.exists():
            raise KeyStoreError(f"{path} already exists; load it, or move it away to start over")
        if not path.parent.is_dir():
            raise KeyStoreError(
                f"cannot create a key store at {path}: {path.parent} does not exist"
            )
        key = storage_key if storage_key is not None else secrets.token_bytes(STORAGE_KEY_SIZE)
        if len(key) != STORAGE_KEY_SIZE:
            raise KeyStoreError(f"storage key must be {STORAGE_KEY_SIZE} bytes, got {len(key)}")
        store = cls(path, identity or NodeIdentity.generate(), key)
        store.save()
        return store

    @classmethod
    def load(cls, path: str | Path) -> KeyStore:
        path = Path(path)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise KeyStoreError(f"no key store at {path}; create one first") from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise KeyStoreError(
                f"{path} has permissions {stat.S_IMODE(st.st_mode):04o}; a key store must be "
                f"readable by its owner only (0600): run `chmod 600 {path}` if the file is "
                "trusted, or replace it if others may have read the keys"
            )
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise KeyStoreError(
                f"{path} is owned by uid {st.st_uid}, not by this user ({os.getuid()})"
            )
        try:
            document = json.loads(path.read_text())
            content, checksum = document["content"], document["checksum"]
        except (ValueError, KeyError, TypeError) as error:
            raise KeyStoreError(f"{path} is not a readable key store: {error}") from None
        if _checksum(content) != checksum:
            raise KeyStoreError(f"{path} is corrupt: its checksum does not match its content")
        try:
            if content["format"] != FORMAT:
                raise KeyStoreError(
                    f"{path}: unknown format {content['format']!r}, expected {FORMAT!r}"
                )
            identity = NodeIdentity.from_seed(bytes.fromhex(content["identity_seed"]))
            if identity.did != content["did"]:
                raise KeyStoreError(f"{path}: identity seed does not give the recorded DID")
            storage_key = bytes.fromhex(content["storage_key"])
            if len(storage_key) != STORAGE_KEY_SIZE:
                raise KeyStoreError(f"{path}: storage key is {len(storage_key)} bytes")
            prekeys = (
                _prekeys_from_json(content["prekeys"])
                if content.get("prekeys") is not None
                else None
            )
        except KeyStoreError:
            raise
        except (ValueError, KeyError, TypeError) as error:
            raise KeyStoreError(f"{path}: malformed field: {error!r}") from None
        return cls(path, identity, storage_key, prekeys)

    def save(self) -> None:
        seed = self.identity.private_key.private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        content = {
            "format": FORMAT,
            "did": self.identity.did,
            "identity_seed": seed.hex(),
            "storage_key": self.storage_key.hex(),
            "prekeys": _prekeys_to_json(self.prekeys) if self.prekeys else None,
        }
        data = json.dumps({"content": content, "checksum": _checksum(content)}, indent=1)
        _write_atomically(self.path, data.encode())

    def set_prekeys(self, prekeys: PrekeySecrets) -> None:
        """Record new (or partly spent) prekeys durably before they are published or used."""
        self.prekeys = prekeys
        self.save()


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL + mode 0600 at creation: the keys are never in a file others could open.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case the umask was unusual
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
