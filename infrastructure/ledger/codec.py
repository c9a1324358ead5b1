"""Domain events <-> stored payloads: canonical JSON, with secret fields sealed.

The payload of a stored event is canonical JSON (UTF-8, keys sorted, no whitespace; custom
types as ``{"_type_": name, "_data_": value}``, eventsourcing's transcoding convention).
A field listed in the event class's ``secret_fields`` is *sealed*: its bytes are encrypted
with ChaCha20-Poly1305 under the node's storage key and kept in the event's ``sealed`` column;
the payload keeps only ``{"_sealed_": hex(BLAKE3(nonce || ciphertext))}``. The event hash covers
the payload, so it commits to the sealed value without revealing it: the ledger verifies
without the storage key, and an export may drop the sealed column and still verify.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, cast
from uuid import UUID

from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    Transcoding,
    UUIDAsHex,
    find_id_convertor,
)
from eventsourcing.utils import TopicError, get_topic, resolve_topic
from l2_session.domain.manager.unconfirmed import UnconfirmedHandshakes
from l2_session.domain.session.peer import Peer
from l2_session.domain.session.session import Session
from l2_session.domain.session.witnessed import WitnessedLog
from l2_session.infrastructure.ledger.errors import (
    LedgerCorrupted,
    PayloadTooLarge,
    SealedFieldError,
    UnknownEventType,
)
from l2_session.infrastructure.ledger.format import MAX_PAYLOAD_BYTES, MAX_SEALED_BYTES, sealed_aad

STORED_AGGREGATES = (Session, Peer, UnconfirmedHandshakes, WitnessedLog)
"""The domain's aggregates a ledger holds. Importing them pins their topics
(domain/session/topics.py): every topic in a ledger resolves here to its class, under the frozen
name the ledger holds, whatever module the class lives in now."""

SEALED_MARK = "_sealed_"
NONCE_SIZE = 12
STORAGE_KEY_SIZE = 32


@dataclass(frozen=True)
class LedgerStoredEvent(StoredEvent):
    """A StoredEvent with the ledger's extra columns (sealed blobs, global position)."""

    sealed: bytes | None = None
    position: int | None = None


@dataclass(frozen=True)
class SealedValue:
    """Stands in for a sealed field read without the storage key (or from an export)."""

    digest: str


class BytesAsBase64(Transcoding):
    type = bytes
    name = "bytes_b64"

    def encode(self, obj: bytes) -> str:
        return base64.b64encode(obj).decode("ascii")

    def decode(self, data: str) -> bytes:
        return base64.b64decode(data, validate=True)


class CanonicalJSONTranscoder(JSONTranscoder):
    """eventsourcing's JSON transcoder, made canonical: sorted keys, no NaN, compact."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = json.JSONEncoder(
            default=self._encode_obj,
            separators=(",", ":"),
            ensure_ascii=False,
            sort_keys=True,
            allow_nan=False,
        )
        for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), BytesAsBase64()):
            self.register(transcoding)
        self._plain = json.JSONDecoder()

    def decode(self, data: bytes) -> Any:
        """As JSONTranscoder's; a payload that cannot hold a ``"_type_"`` key (no such text,
        no escape that could spell one) is read without the per-object hook."""
        if b'"_type_"' in data or b"\\u" in data:
            return super().decode(data)
        return self._plain.decode(data.decode("utf8"))


class FieldSealer:
    """Seals and opens secret fields with ChaCha20-Poly1305 under the node's storage key."""

    def __init__(self, storage_key: bytes | None) -> None:
        if storage_key is not None and len(storage_key) != STORAGE_KEY_SIZE:
            raise SealedFieldError(
                f"the storage key must be {STORAGE_KEY_SIZE} bytes, got {len(storage_key)}"
            )
        self._aead = ChaCha20Poly1305(storage_key) if storage_key is not None else None

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def seal(self, value: bytes, aad: bytes) -> bytes:
        if self._aead is None:
            raise SealedFieldError(
                "this ledger was opened without a storage key, so it cannot record secret "
                "fields; pass storage_key= (kept in the node's key store, never in the ledger)"
            )
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, value, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        assert self._aead is not None
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], aad)
        except InvalidTag:
            raise SealedFieldError(
                "a sealed field failed authentication: wrong storage key, or the sealed "
                "blob was altered"
            ) from None


def encode_sealed_column(blobs: dict[str, bytes]) -> bytes:
    """The ``sealed`` column: canonical JSON of {field: base64(nonce || ciphertext)}."""
    return json.dumps(
        {k: base64.b64encode(v).decode("ascii") for k, v in blobs.items()},
        sort_keys=True,
        separators=(",", ":"),
    ).encode()


def decode_sealed_column(data: bytes) -> dict[str, bytes]:
    raw = json.loads(data)
    if not isinstance(raw, dict):
        raise ValueError("sealed column is not a JSON object")
    return {str(k): base64.b64decode(v, validate=True) for k, v in raw.items()}


def sealed_reference(value: object) -> str | None:
    """The digest if ``value`` is a payload's reference to a sealed field, else None."""
    if isinstance(value, dict) and len(value) == 1 and SEALED_MARK in value:
        digest = value[SEALED_MARK]
        return digest if isinstance(digest, str) else None
    return None


_EventClass = tuple[type, tuple[str, ...], Any, int]
"""An event class, its secret fields, its id convertor and its class version."""


class LedgerMapper(Mapper[UUID]):
    """eventsourcing's Mapper for the ledger: canonical payloads and sealed secret fields."""

    secret_fields_attr: ClassVar[str] = "secret_fields"

    def __init__(self, sealer: FieldSealer) -> None:
        super().__init__(transcoder=CanonicalJSONTranscoder())
        self.sealer = sealer
        self._classes: dict[tuple[str, type], _EventClass] = {}

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        cls = type(domain_event)
        event_state = dict(vars(domain_event))
        originator_id = event_state.pop("originator_id")
        originator_version = event_state.pop("originator_version")
        class_version = getattr(cls, "class_version", 1)
        if class_version > 1:
            event_state["class_version"] = class_version
        sealed: bytes | None = None
        secret_fields: tuple[str, ...] = getattr(cls, self.secret_fields_attr, ())
        if secret_fields:
            sealed = self._seal_fields(
                event_state, secret_fields, originator_id, originator_version
            )
        payload = self.transcoder.encode(event_state)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise PayloadTooLarge(
                f"event {cls.__qualname__} of session {originator_id} version "
                f"{originator_version} has a {len(payload)}-byte payload; the limit is "
                f"{MAX_PAYLOAD_BYTES} bytes"
            )
        return LedgerStoredEvent(
            originator_id=originator_id,
            originator_version=originator_version,
            topic=get_topic(cls),
            state=payload,
            sealed=sealed,
        )

    def _seal_fields(
        self,
        event_state: dict[str, Any],
        fields: tuple[str, ...],
        originator_id: UUID | str,
        version: int,
    ) -> bytes | None:
        session = _id_bytes(originator_id)
        blobs: dict[str, bytes] = {}
        for name in fields:
            value = event_state.get(name)
            if value is None:
                continue
            if not isinstance(value, bytes):
                raise SealedFieldError(
                    f"secret field {name!r} of session {originator_id} version {version} "
                    f"must be bytes, got {type(value).__name__}"
                )
            blob = self.sealer.seal(value, sealed_aad(session, version, name))
            blobs[name] = blob
            event_state[name] = {SEALED_MARK: blake3(blob).hexdigest()}
        if not blobs:
            return None
        column = encode_sealed_column(blobs)
        if len(column) > MAX_SEALED_BYTES:
            raise PayloadTooLarge(
                f"sealed fields of session {originator_id} version {version} take "
                f"{len(column)} bytes; the limit is {MAX_SEALED_BYTES} bytes"
            )
        return column

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        topic = stored_event.topic
        known = self._classes.get((topic, type(stored_event.originator_id)))
        if known is None:
            known = self._class_of(stored_event)
        cls, secret_fields, id_convertor, class_version = known
        try:
            event_state: dict[str, Any] = self.transcoder.decode(stored_event.state)
        except (ValueError, UnicodeDecodeError) as e:
            raise LedgerCorrupted(
                f"payload at {_where(stored_event)} is not valid canonical JSON: {e}"
            ) from e
        if secret_fields:
            sealed = getattr(stored_event, "sealed", None)
            self._open_fields(event_state, secret_fields, stored_event, sealed)
        event_state["originator_id"] = id_convertor(stored_event.originator_id)
        event_state["originator_version"] = stored_event.originator_version
        from_version = event_state.pop("class_version", 1)
        while from_version < class_version:
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(event_state)
            from_version += 1
        domain_event: Any = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", event_state)
        return cast(DomainEventProtocol[UUID], domain_event)

    def _class_of(self, stored_event: StoredEvent) -> _EventClass:
        """The event class of a stored event's topic, with what decoding needs of it (kept
        per topic and type of id: resolving a topic is a lookup in ``sys.modules``)."""
        try:
            cls = resolve_topic(stored_event.topic)
        except TopicError:
            raise UnknownEventType(
                f"event type {stored_event.topic!r} at {_where(stored_event)} cannot be loaded "
                "by this program (unknown module or class)"
            ) from None
        id_type = type(stored_event.originator_id)
        known = (
            cls,
            tuple(getattr(cls, self.secret_fields_attr, ())),
            find_id_convertor(cls, cast(Hashable, id_type)),
            getattr(cls, "class_version", 1),
        )
        self._classes[(stored_event.topic, id_type)] = known
        return known

    def _open_fields(
        self,
        event_state: dict[str, Any],
        fields: tuple[str, ...],
        stored_event: StoredEvent,
        sealed: bytes | None,
    ) -> None:
        try:
            blobs = decode_sealed_column(sealed) if sealed else {}
        except ValueError as e:
            raise LedgerCorrupted(
                f"sealed column at {_where(stored_event)} is malformed: {e}"
            ) from e
        session = _id_bytes(stored_event.originator_id)
        for name in fields:
            digest = sealed_reference(event_state.get(name))
            if digest is None:
                continue
            blob = blobs.get(name)
            if blob is None or not self.sealer.has_key:
                event_state[name] = SealedValue(digest)
                continue
            if blake3(blob).hexdigest() != digest:
                raise LedgerCorrupted(
                    f"sealed field {name!r} at {_where(stored_event)} does not match the digest "
                    "the event hash commits to"
                )
            event_state[name] = self.sealer.open(
                blob, sealed_aad(session, stored_event.originator_version, name)
            )


def _where(stored_event: StoredEvent) -> str:
    """Where a stored event is, for an error message."""
    position = getattr(stored_event, "position", None)
    return f"session {stored_event.originator_id} version {stored_event.originator_version}" + (
        f" (position {position})" if position is not None else ""
    )


def _id_bytes(originator_id: UUID | str) -> bytes:
    return (originator_id.hex if isinstance(originator_id, UUID) else originator_id).encode()
