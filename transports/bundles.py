"""Prekey bundles over a node's connections (SPEC-018 §4: a session starts from the peer's
signed prekey bundle). A node that has a connection to a peer but not its bundle asks for it
on that connection; the peer's node answers with its own.

Two frames of the wire (frames.py kinds 13 and 14), in clear — a bundle is public, and signed:

- ``BundleRequest(did)``: "send me the bundle of ``did``", which must be the DID of the node
  asked (it answers nothing else);
- ``BundleResponse(did, bundle)``: ``did``'s bundle as ``PrekeyBundle.encode`` writes it.

The asker takes a response only for the DID its connection is with, and only through the
directory's ``publish_bundle``, which checks the bundle's signatures against that DID's key
and its expiry (infrastructure/resolver.py): a connection that claims a DID it does not hold
cannot plant a bundle for it. A node answers each connection once, with the bundle its
``serve_bundle`` gives for one asker (l2-session node: one one-time prekey each, spent once).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BundleRequest:
    did: str


@dataclass(frozen=True, slots=True)
class BundleResponse:
    did: str
    bundle: bytes
