"""DID resolution and prekey bundle publication (SPEC-018 §5.2 ``did_resolve``, §6.3).

A resolver turns a DID into the Ed25519 identity key it names, and fetches the DID's current
signed prekey bundle. Every fetched bundle is verified against the identity key the DID names
(signatures, expiry), so a directory that lies can only withhold bundles, not substitute them.

- ``DidKeyResolver``: did:key built in (no network); bundles come from a ``PrekeyDirectory``.
- ``MockResolver``: SPEC-018 §6.3's test double: documents for any DID method, set up by the
  test, with switches to make resolution fail.
- ``PrekeyDirectory``: an in-memory directory of published bundles. Like Signal's server it
  hands out each one-time prekey once: a fetch gets at most one, and removes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from l2_session.domain.handshake.bundle import PrekeyBundle
from l2_session.infrastructure.identity import (
    DIDError,
    did_key_from_public_bytes,
    public_bytes_from_did_key,
)


class ResolutionError(LookupError):
    """The DID is well formed but cannot be resolved now (unknown, nothing published)."""


@dataclass(frozen=True)
class DIDDocument:
    """What the handshake needs of a DID document: its Ed25519 verification key."""

    did: str
    identity_key: bytes


class DIDResolver(Protocol):
    def resolve(self, did: str) -> DIDDocument: ...

    def publish_bundle(self, did: str, bundle: bytes, now_us: int) -> None: ...

    def fetch_bundle(self, did: str, now_us: int) -> PrekeyBundle: ...


class PrekeyDirectory:
    """Published bundles by DID, with their pools of one-time prekeys."""

    def __init__(self) -> None:
        self._bundles: dict[str, PrekeyBundle] = {}

    def put(self, did: str, bundle: PrekeyBundle) -> None:
        self._bundles[did] = bundle

    def __contains__(self, did: object) -> bool:
        """Whether a bundle is published for ``did`` (current or not)."""
        return did in self._bundles

    def take(self, did: str) -> PrekeyBundle:
        try:
            bundle = self._bundles[did]
        except KeyError:
            raise ResolutionError(f"no prekey bundle published for {did}") from None
        if not bundle.one_time_prekeys:
            return bundle
        first, rest = bundle.one_time_prekeys[0], bundle.one_time_prekeys[1:]
        self._bundles[did] = bundle.with_one_time_prekeys(rest)
        return bundle.with_one_time_prekeys((first,))

    def remaining_one_time_prekeys(self, did: str) -> int:
        bundle = self._bundles.get(did)
        return len(bundle.one_time_prekeys) if bundle else 0


def _publish(directory: PrekeyDirectory, doc: DIDDocument, data: bytes, now_us: int) -> None:
    bundle = PrekeyBundle.parse(data)
    bundle.verify(now_us, expected_identity=doc.identity_key)  # only the DID's owner publishes
    directory.put(doc.did, bundle)


def _fetch(directory: PrekeyDirectory, doc: DIDDocument, now_us: int) -> PrekeyBundle:
    bundle = directory.take(doc.did)
    # Owner and expiry only: the signatures were checked when the bundle was published, and
    # the handshake checks them again before any use (InitiatorHandshake.start), so a
    # corrupted or swapped directory entry is still refused — with one Ed25519 verify per
    # handshake, not two (docs/benchmarks.md, "Handshakes with ledger appends").
    bundle.check_current(now_us, expected_identity=doc.identity_key)
    return bundle


class DidKeyResolver:
    """did:key, resolved locally: the DID *is* the key."""

    def __init__(self, directory: PrekeyDirectory | None = None) -> None:
        self.directory = directory or PrekeyDirectory()

    def resolve(self, did: str) -> DIDDocument:
        return DIDDocument(did, public_bytes_from_did_key(did))  # DIDError says what is wrong

    def publish_bundle(self, did: str, bundle: bytes, now_us: int) -> None:
        _publish(self.directory, self.resolve(did), bundle, now_us)

    def fetch_bundle(self, did: str, now_us: int) -> PrekeyBundle:
        return _fetch(self.directory, self.resolve(did), now_us)


class MockResolver:
    """Test documents for any DID (did:key, did:example, ...), plus failure switches.

    ``unreachable`` makes every resolution fail as a network resolver would when offline;
    ``documents`` may map a DID to a key other than the one it names, to test that the
    handshake catches a resolver serving the wrong key.
    """

    def __init__(self, documents: Mapping[str, bytes] | None = None) -> None:
        self.documents: dict[str, bytes] = dict(documents or {})
        self.directory = PrekeyDirectory()
        self.unreachable = False
        self.resolutions = 0

    def add(self, identity_key: bytes, did: str | None = None) -> str:
        did = did or did_key_from_public_bytes(identity_key)
        self.documents[did] = identity_key
        return did

    def resolve(self, did: str) -> DIDDocument:
        self.resolutions += 1
        if not isinstance(did, str) or not did.startswith("did:") or did.count(":") < 2:
            raise DIDError(f"not a DID: {did!r}")
        if self.unreachable:
            raise ResolutionError(f"resolver unreachable while resolving {did}")
        try:
            return DIDDocument(did, self.documents[did])
        except KeyError:
            raise ResolutionError(f"no DID document for {did}") from None

    def publish_bundle(self, did: str, bundle: bytes, now_us: int) -> None:
        _publish(self.directory, self.resolve(did), bundle, now_us)

    def fetch_bundle(self, did: str, now_us: int) -> PrekeyBundle:
        return _fetch(self.directory, self.resolve(did), now_us)
