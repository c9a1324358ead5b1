"""A node's check that a link reaches the peer it holds sessions with (decision 24): one frame
of the node's own, sealed in a session's channel like data (sealed.py), never sent in clear.

- ``LinkCheck(conversation, answer)``: sent by the node that dialled a QUIC link to a peer
  whose sessions fell back to μTCP (``answer`` false), and sent back on the same link by the
  peer (``answer`` true).

A link opens with the dialler's DID in its hello: a claim. The check opens only under keys of
a session the two nodes agreed, so it proves the link to the peer that opens it, which answers
on the link it came in on; the answer proves the link to the dialler in turn. Each end then
routes the peer's frames on that link, records the sessions' move back
(``SessionManager.transport_proven``), and the dialler closes the μTCP connection the link
replaces. A replayed check is refused by the channel's replay window, like any sealed frame.

frames.py kind 17. The session manager never sees the frame; a session's messages, counters
and acknowledgements are not touched by it beyond the channel counters it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID


@dataclass(frozen=True, slots=True)
class LinkCheck:
    conversation: UUID
    answer: bool
