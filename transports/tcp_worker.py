"""The TCP node's worker thread: the one thread that touches the session manager and the
sealed channels (tcp.py is the node, the event loop's side).

The manager is not thread-safe, and its calls save (sign, chain, commit: CPU and, at
durability ``full``, an fsync). So the event loop never calls it: it collects what happened
while the worker was busy — connections up and down, frames read, the application's sends and
commands, a due tick — and hands it over as one ``Batch``. The worker decides the batch, in
stages, each with at most one save where the manager allows it:

1. connections up (``reconnected``: the sessions a restart left waiting resume) and down;
2. commands (``TcpNode.command`` / ``query``), one by one, each as the caller wrote it;
3. frames: one ``receive_each`` (one save) for all of them, each decided in the order read
   (with the node's ``answer``, if it has one: the answers ride in that save);
4. sends: one ``submit_many`` (one save) for all of them;
5. the tick, if the timers asked for one (one save, the manager's).

What a stage asks to send is routed and sealed here, once the stage's saves have returned
(the manager derives outputs only after its save, and sealing reserves counters in the ledger
before it uses them), and posted to the loop, which writes it: no byte leaves before the save
it depends on. Frames the loop reads meanwhile wait for the next batch — group commit by
design, with no timer: a batch is whatever arrived during the previous one.

Routing and proof are the worker's too. A connection opens with the connecting node's DID
(tcp_links.py): that is a claim. A connection is *proven* for a DID once a frame it carried
made the manager take new keys with that DID — an INIT signed by the DID's key and confirmed,
a RESPONSE signed by it, a RESUME MAC under the session's secret — or once it carried a
sealed frame that opened under keys this node agreed with that DID itself (not keys it
replayed from the ledger, whose replay window restarted empty). Routing:

- channel frames go to the DID's proven connection, else to the connection this node opened
  to the DID (it chose the address), never to a connection that only claims the DID (none
  of these: the frame is lost, as on a network);
- a handshake frame answering a frame goes back on the connection that frame came in on;
- other handshake frames (establish, resume, timers) go to the proven connection, else the
  connection this node opened to the DID, else the latest claim.

The proven connection is the one the DID's latest proving frame came in on — unless a link
check (link_check.py, decision 24) settled one: then frames arriving on the peer's
connections that were up before it (sent before the move) are taken but do not move the
route; a connection up since takes it with its first proof. A connection from the peer that
takes the route moves the peer's sessions over QUIC to it when it is μTCP (the peer fell
back: decision 24); one that only claims the DID moves nothing and records nothing.

So an unproven claim never displaces a proven connection, and a connection claiming someone
else's DID gets nothing but answers to what it sent itself. The handshake engine keys
quarantine and rate limits by the source a frame came from (``address_of``, which the key
exchange calls from inside the manager, so on this thread): while a frame is decided, the
connection it came in on; its IPv4 address, or its IPv6 address's /64 (decision 19 in
docs/spec-decisions.md).
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any
from uuid import UUID

from l2_session.domain.manager.manager import Answer, SessionManager
from l2_session.domain.session.commands import Frame, Output, Send
from l2_session.domain.session.core import QUIC, TRANSPORTS
from l2_session.domain.session.errors import SessionError
from l2_session.domain.session.session import Session
from l2_session.domain.session.states import State, Trigger, is_allowed
from l2_session.infrastructure.ledger.witness import Witnessing
from l2_session.transports.bundles import BundleRequest, BundleResponse
from l2_session.transports.frames import FrameError, decode, encode
from l2_session.transports.link_check import LinkCheck
from l2_session.transports.sealed import SEALED_KIND, SealedFrames, SealRefused, is_channel_frame
from l2_session.transports.tcp_handoff import Batch, Command, Link, Message, Outcome, Report
from l2_session.transports.witness_frames import (
    WITNESS_FRAMES,
    CheckpointOffer,
    CheckpointReply,
    offer_frame,
    take,
)

log = logging.getLogger("l2_session.transport")

PRUNE_FLOOR = 1024  # _agreed_here entries before the first prune
_AFTER_QUIC = TRANSPORTS[TRANSPORTS.index(QUIC) + 1 :]  # what sessions move back to QUIC from
# Decision 25: how often a node offers each peer its checkpoint (and once when a session with
# it is established). Five minutes: a rewrite is caught within minutes, at two small frames
# and at most two ledger appends per peer and interval.
WITNESS_INTERVAL_US = 300_000_000


@dataclass
class _Proof:
    """What one frame of a batch proved, applied once the batch is saved."""

    link: Link
    proves: bool = False  # the frame proved link.did on link
    agreed: tuple[UUID, str] | None = None  # (conversation, key id) agreed through this node


class NodeWorker:
    """The deciding side of a ``TcpNode``, run by one thread (``start``). Everything here,
    the manager and the sealed channels included, is touched by that thread alone — except
    before it starts (the node's constructor recovers the manager) and after it stopped."""

    def __init__(
        self,
        manager: SessionManager,
        now_us: Callable[[], int],
        sealed: SealedFrames,
        post: Callable[[Outcome], None],
        finished: Callable[[Report], None],
        answer: Answer | None = None,
        serve_bundle: Callable[[], bytes] | None = None,
        publish_bundle: Callable[[str, bytes, int], None] | None = None,
        witnessing: Witnessing | None = None,
        witness_interval_us: int = WITNESS_INTERVAL_US,
    ) -> None:
        self.manager, self.now_us, self.sealed = manager, now_us, sealed
        # Peers witness each other's ledgers over their sessions (decision 25): an offer
        # to each peer with an established session when it comes up, then every interval.
        self.witnessing = witnessing
        self.witness_interval_us = witness_interval_us
        self._witness_due: dict[str, int] = {}  # peer did -> when the next offer is due
        self._witness_scan_us = 0  # sessions are looked over at most once a second
        self._witnessed_now: list[tuple[Link, Any]] = []  # this batch's witnessing frames
        self.answer = answer
        # Prekey bundles over connections (bundles.py): this node's to hand out (each call
        # takes at most one one-time prekey from its pool), and where a peer's goes.
        self.serve_bundle, self.publish_bundle = serve_bundle, publish_bundle
        self.bundles_received: set[str] = set()  # DIDs whose bundle came and was published
        self.bundles_refused = 0  # bundle frames not answered or not taken
        self._bundles_sent: weakref.WeakSet[Link] = weakref.WeakSet()
        self._post_outcome, self._finished = post, finished
        self.failed_ticks = 0
        self.failed_frames = 0
        self.unrouted = 0  # frames with no connection to go to
        self.link_checks_refused = 0  # checks not opened under keys agreed here, or unasked
        self.outputs: Counter[str] = Counter()  # Sends performed by frame class, and Delivers
        self._claimed: dict[str, Link] = {}
        self._proven: dict[str, Link] = {}
        # Decision 24: a link check settles which link carries a peer's sessions — with the
        # count of links up when it did: a link up since may still take the route by a proof,
        # one up before may not (its frames were sent before the move) — until it goes down.
        self._settled: dict[str, tuple[Link, int]] = {}
        self._up_seq: dict[Link, int] = {}  # each open link: the count of links up at its own
        self._ups = 0
        self._checks_sent: dict[str, Link] = {}  # peer did -> the link a check went out on
        self._checked_now: list[tuple[Link, LinkCheck, bool]] = []  # this batch's checks
        # conversation -> the key id agreed through this node (a proof: see the docstring)
        self._agreed_here: dict[UUID, str] = {}
        self._prune_at = PRUNE_FLOOR
        self._reading: Link | None = None
        self._dropped_now: set[Link] = set()  # dropped by a frame of the batch in hand
        self._out = Outcome()
        self._jobs: queue.SimpleQueue[Batch | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="l2-session-node", daemon=True)
        self._thread.start()

    def on_worker(self) -> bool:
        thread = self._thread
        return thread is None or thread.ident == threading.get_ident()

    def submit(self, batch: Batch) -> None:
        """Decide ``batch`` on the worker; the loop hears of it through ``post`` (per stage)
        and ``finished`` (once)."""
        self._jobs.put(batch)

    def stop(self) -> None:
        """Stop the thread once the batch in hand is decided (blocks until it is)."""
        if self._thread is None:
            return
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (batch := self._jobs.get()) is not None:
            try:
                report = self._decide_batch(batch)
            except Exception:  # a bug: the node must not hang waiting for this batch
                log.exception("a batch could not be decided")
                report = Report({}, None, self._taken())
            self._finished(report)

    def _decide_batch(self, batch: Batch) -> Report:
        stages: list[Callable[[], None]] = []
        if batch.links:
            stages.append(lambda: self._links(batch.links))
        stages += [partial(self._command, command) for command in batch.commands]
        if batch.frames:
            stages.append(partial(self._decide, batch.frames))
        if batch.messages:
            stages.append(partial(self._submit, batch.messages))
        if batch.tick:
            stages.append(self._tick)
        for n, stage in enumerate(stages, start=1):
            stage()
            if n < len(stages) and self._out:
                # What this stage decided leaves now, not after the next stage's saves.
                self._post_outcome(self._taken())
        for condition in batch.conditions:
            try:
                condition.result = bool(condition.fn())
            except Exception as error:
                condition.error = error
        room = {sid: self._room(sid) for sid in batch.watch}
        # The last stage's outcome goes with the report: one wake-up of the loop, not two.
        return Report(room, self.manager.next_wakeup_us(), self._taken())

    def _taken(self) -> Outcome:
        out, self._out = self._out, Outcome()
        return out

    def _command(self, command: Command) -> None:
        try:
            command.result = command.fn()
        except Exception as error:
            command.error = error
        self._out.decided.append(command)

    # ------------------------------------------------------------------ connections
    def _links(self, events: list[tuple[Link, bool]]) -> None:
        for link, up in events:
            if up:
                self._up(link)
            else:
                self._down(link)

    def _up(self, link: Link) -> None:
        """A connection with ``link.did`` is up: routed to, and the sessions a restart left
        waiting for that peer resume over it (decision 16). A resumption proves itself (its
        MAC is under the session's secret), so a connection that only claims the DID can only
        make it time out, and the session retries with a full handshake."""
        current = self._claimed.get(link.did)
        if link.outgoing or current is None or not current.outgoing:
            self._claimed[link.did] = link  # our own connection to it stays first
        self._ups += 1
        self._up_seq[link] = self._ups
        try:
            self.perform(self.manager.reconnected(link.did, self.now_us()), via=link)
            if link.outgoing:
                # Our own connection, to an address we were given: the sessions falling back
                # to its transport switch to it (decision 24). One from the peer moves them
                # once it proves the peer (_proven_on): a claim moves nothing.
                self.perform(self.manager.transport_found(link.did, link.kind, self.now_us()))
        except Exception:  # the ledger failed to save: the sessions' timers retry
            log.exception("resuming the sessions with %s failed", link.did)

    def _down(self, link: Link) -> None:
        for routes in (self._claimed, self._proven, self._checks_sent):
            if routes.get(link.did) is link:
                del routes[link.did]
        settled = self._settled.get(link.did)
        if settled is not None and settled[0] is link:
            del self._settled[link.did]
        self._up_seq.pop(link, None)

    def _drop(self, link: Link, why: str) -> None:
        """A frame broke ``link``'s framing: it cannot be resynchronised."""
        self._dropped_now.add(link)
        self._down(link)
        self._out.dropped.append((link, why))

    def forget_routes(self) -> None:
        """Once the thread has stopped: no connection is left to route to."""
        for routes in (self._claimed, self._proven, self._settled, self._checks_sent):
            routes.clear()
        self._up_seq.clear()

    def address_of(self, peer_did: str) -> str:
        """See ``TcpNode.address_of``; called by the key exchange, inside the manager."""
        reading = self._reading
        link = reading if reading is not None and reading.did == peer_did else None
        link = link or self._route(peer_did)
        return "" if link is None else link.source

    def _route(self, did: str) -> Link | None:
        """The connection a handshake frame to ``did`` goes on, unless it answers a frame:
        the proven one, else the latest claim (see the module)."""
        return self._proven.get(did) or self._claimed.get(did)

    def is_proven(self, peer_did: str) -> bool:
        return peer_did in self._proven

    def transport_to(self, peer_did: str) -> str | None:
        """The transport of the connection frames to ``peer_did`` would go on, if any."""
        link = self._route(peer_did)
        return None if link is None else link.kind

    # ------------------------------------------------------------------ frames
    def _decide(self, batch: list[tuple[Link, bytes]]) -> None:
        """One ``receive_each`` (one save) for ``batch``, then each frame answered on its own
        connection. A failure that is not the peers' (the ledger failed to save) loses the
        batch, as a network would, and the node reads on."""
        proofs: list[_Proof] = []
        try:
            groups = self.manager.receive_each(
                self._frames(batch, proofs), self.now_us(), answer=self.answer
            )
        except Exception:
            self.failed_frames += len(proofs)
            log.exception("%d frame(s) could not be handled", len(proofs))
            groups = []
            proofs.clear()
        finally:
            self._reading = None
            self._dropped_now.clear()
        witnessed, self._witnessed_now = self._witnessed_now, []
        for link, frame in witnessed:
            self._witness_frame(link, frame)
        checked, self._checked_now = self._checked_now, []
        for link, check, proves in checked:
            self._link_checked(link, check, proves)
        for proof, outputs in zip(proofs, groups, strict=True):
            if proof.agreed is not None:
                self._agreed_here[proof.agreed[0]] = proof.agreed[1]
            if proof.proves:
                self._proven_on(proof.link)
            try:
                self.perform(outputs, via=proof.link)
            except Exception:  # one frame's answers, not the others'
                self.failed_frames += 1
                log.exception("the answers to a frame from %s could not be sent", proof.link.did)
        self._prune()

    def _frames(
        self, batch: list[tuple[Link, bytes]], proofs: list[_Proof]
    ) -> Iterator[tuple[str, Frame]]:
        """The batch's frames for ``receive_each``, one at a time: each opened (if sealed)
        only once the frames before it are decided — so under keys a handshake frame just
        before it agreed — and, once it is decided, what it proved noted in ``proofs``."""
        agreed: dict[UUID, str] = {}  # this batch's agreements, not yet saved
        for link, body in batch:
            if link in self._dropped_now:
                continue  # dropped for an earlier frame of this batch
            proof = _Proof(link)
            try:
                if body[0] == SEALED_KIND:
                    frame, key_id = self.sealed.open(link.did, body)
                    if isinstance(frame, WITNESS_FRAMES):
                        self._witnessed_now.append((link, frame))  # once the batch is saved
                        continue
                    here = agreed.get(frame.conversation, self._agreed_here.get(frame.conversation))
                    proof.proves = here == key_id
                    if isinstance(frame, LinkCheck):
                        self._checked_now.append((link, frame, proof.proves))  # likewise
                        continue
                else:
                    wire = decode(body)
                    if isinstance(wire, BundleRequest | BundleResponse):
                        self._bundle_frame(link, wire)
                        continue
                    frame = wire
                    if is_channel_frame(frame):
                        self.sealed.refused["unsealed"] += 1
                        continue
            except SealRefused:
                continue  # counted in sealed.refused; nothing changed
            except FrameError as error:
                self._drop(link, f"{link.did}: {error}")
                continue
            # The session as it was in memory before the frame. A session the manager
            # replays from the ledger while deciding the frame (after a restart) also shows
            # keys it did not have before; those were agreed before the restart, not by it.
            before = self.manager.session_for(frame.conversation)
            before_key = None if before is None else before.key_id
            self._reading = link
            # A session this frame opens records the transport that carried it (decision 20).
            self.manager.transport = link.kind
            proofs.append(proof)
            yield link.did, frame
            after = self.manager.session_for(frame.conversation)
            after_key = None if after is None else after.key_id
            if after is before and after_key is not None and after_key != before_key:
                # A handshake with link.did completed with this frame.
                agreed[frame.conversation] = after_key
                proof.agreed, proof.proves = (frame.conversation, after_key), True
        # The batch is saved and its answers derived with no frame in hand: a peer's address
        # is then its proven connection's (address_of), never the last frame's.
        self._reading = None

    def _proven_on(self, link: Link) -> None:
        """A frame proved ``link.did`` on ``link``: the peer's frames go on it — unless a link
        check settled another of its links, up before this one — and when a connection from
        the peer takes the route, its sessions over QUIC move to it if it is μTCP: the peer
        fell back (decision 24), which this end learns from the peer's own frames, not from
        a connection that only claims the DID."""
        did = link.did
        self._out.proven.append(link)
        settled = self._settled.get(did)
        if settled is not None and settled[0] is not link:
            if self._up_seq.get(link, 0) <= settled[1]:
                return  # sent before the check settled the route
            del self._settled[did]
        before = self._proven.get(did)
        self._proven[did] = link
        if before is not link and not link.outgoing:
            try:
                self.perform(self.manager.transport_found(did, link.kind, self.now_us()))
            except Exception:  # the ledger failed to save: the next proof tries again
                if before is None:
                    del self._proven[did]
                else:
                    self._proven[did] = before
                log.exception("the sessions with %s could not record their move", did)

    # ------------------------------------------------------------------ link checks
    def off_quic(self, peer_did: str) -> bool:
        """Whether a live session with ``peer_did`` is over a transport after QUIC in the
        order (decision 24: it would move back once QUIC works)."""
        return any(s.transport in _AFTER_QUIC for s in self.manager.sessions_with(peer_did))

    def _movable(self, peer_did: str) -> Session | None:
        """A session with ``peer_did`` that can move back to QUIC now, and whose channel can
        seal a link check: over a later transport, with keys, no fallback pending, in a state
        that takes ``transport_switched`` (established, degraded, …)."""
        for session in self.manager.sessions_with(peer_did):
            if (
                session.transport in _AFTER_QUIC
                and session.key_id is not None
                and not session.fallback_pending
                and is_allowed(session.state, Trigger.TRANSPORT_SWITCHED)
            ):
                return session
        return None

    def settled_kind(self, peer_did: str) -> str | None:
        """The transport of the link a link check settled for ``peer_did``, if any."""
        settled = self._settled.get(peer_did)
        return None if settled is None else settled[0].kind

    def check_link(self, peer_did: str) -> bool:
        """Send a link check (link_check.py) on the QUIC link this node dialled to
        ``peer_did``, sealed in a session that could move back to it; whether one went."""
        link = self._dialled(peer_did)
        session = self._movable(peer_did)
        if link is None or link.kind != QUIC or session is None:
            return False  # no link, or no session to seal it in now (a rotation under way)
        data = self._sealed(LinkCheck(session.conversation, False))
        if data is None:
            return False
        self._checks_sent[peer_did] = link
        self.outputs["LinkCheck"] += 1
        self._out.writes.append((link, data))
        return True

    def _link_checked(self, link: Link, check: LinkCheck, proves: bool) -> None:
        """A link check from ``link.did``, once the batch is saved. A check that opened under
        keys agreed here settles ``link`` as the peer's: answered on it, and the peer's
        sessions over a later transport move to it. An answer settles the link this node
        sent its check on, and retires the connection it replaces."""
        did = link.did
        asked = self._checks_sent.get(did) is link
        if not proves or (check.answer and not asked):
            self.link_checks_refused += 1
            return
        self._proven[did], self._settled[did] = link, (link, self._ups)
        self._out.proven.append(link)
        if check.answer:
            del self._checks_sent[did]
            self._out.settled.append(link)  # the connections it replaces close
        else:
            data = self._sealed(LinkCheck(check.conversation, True))
            if data is not None:
                self.outputs["LinkCheck"] += 1
                self._out.writes.append((link, data))
        try:
            self.perform(self.manager.transport_proven(did, link.kind, self.now_us()))
        except Exception:  # the ledger failed to save: the link carries the frames anyway
            log.exception("the sessions with %s could not record their move to %s", did, link.kind)

    def _bundle_frame(self, link: Link, frame: BundleRequest | BundleResponse) -> None:
        """Answer a request for this node's bundle (once per connection), or take the bundle
        of the DID the connection is with (published: its signatures are checked there)."""
        if isinstance(frame, BundleRequest):
            serve = self.serve_bundle
            if frame.did != self.manager.local_did or serve is None or link in self._bundles_sent:
                self.bundles_refused += 1
                return
            self._bundles_sent.add(link)
            self._out.writes.append((link, encode(BundleResponse(frame.did, serve()))))
            return
        if frame.did != link.did or self.publish_bundle is None:
            self.bundles_refused += 1
            return
        try:
            self.publish_bundle(frame.did, frame.bundle, self.now_us())
        except Exception as error:  # forged, expired, malformed: not the DID's bundle
            self.bundles_refused += 1
            log.warning("a bundle for %s from %s refused: %s", frame.did, link.address, error)
            return
        self.bundles_received.add(frame.did)

    def request_bundle(self, did: str) -> bool:
        """Ask ``did`` for its bundle on the connection frames to it would go on."""
        link = self._route(did)
        if link is None:
            return False
        self.bundles_received.discard(did)
        self._out.writes.append((link, encode(BundleRequest(did))))
        return True

    def _prune(self) -> None:
        """Forget the keys agreed here for sessions that have left the manager's memory (they
        closed) or have other keys since, once the table has doubled: it stays within twice
        the sessions in memory, without a scan per frame."""
        if len(self._agreed_here) < self._prune_at:
            return
        for conversation, key_id in list(self._agreed_here.items()):
            session = self.manager.session_for(conversation)
            if session is None or session.key_id != key_id:
                del self._agreed_here[conversation]
        self._prune_at = max(PRUNE_FLOOR, 2 * len(self._agreed_here))

    # ------------------------------------------------------------------ sends and time
    def _submit(self, messages: list[Message]) -> None:
        """One ``submit_many`` (one save) for the application's messages. Each is queued
        (its outputs performed) or refused with its ``SessionError`` (``WindowFull``: the
        loop holds it back until there is room); if the save fails, none is queued and each
        caller learns why."""
        for message in messages:  # one held back for room before is tried afresh
            message.error = None
        try:
            results = self.manager.submit_many(
                [(m.session_id, m.payload) for m in messages], self.now_us()
            )
        except Exception as error:
            log.exception("%d message(s) could not be queued", len(messages))
            for message in messages:
                message.error = error
        else:
            for message, result in zip(messages, results, strict=True):
                if isinstance(result, SessionError):
                    message.error = result
                    continue
                try:
                    self.perform(result)
                except Exception:  # queued (saved): the session's timers send it again
                    log.exception("message for session %s queued, not sent", message.session_id)
        self._out.decided.extend(messages)

    def _tick(self) -> None:
        """A tick that raises (the ledger failed to save) sent nothing and left its sessions
        re-armed from the ledger (``SessionManager.tick``): it is logged and counted, and the
        timers go on."""
        now = self.now_us()
        try:
            self.perform(self.manager.tick(now))
        except Exception:
            self.failed_ticks += 1
            log.exception("tick at %d failed; its timers fire again", now)
        if self.witnessing is not None and now >= self._witness_scan_us:
            self._witness_scan_us = now + 1_000_000
            self.witness_peers(now)

    # ------------------------------------------------------------------ witnessing
    def witness_peers(self, now: int, *, all_now: bool = False) -> int:
        """Offer this node's checkpoint to each peer with an established session whose offer
        is due (every one, ``all_now``); how many offers went out."""
        if self.witnessing is None:
            return 0
        sent = 0
        for session in self.manager.sessions():
            peer = session.peer_did
            if session.state != State.ESTABLISHED or session.key_id is None:
                continue
            if not all_now and self._witness_due.get(peer, 0) > now:
                continue
            self._witness_due[peer] = now + self.witness_interval_us
            sent += self._offer(session.conversation, peer)
        return sent

    def _offer(self, conversation: UUID, peer: str) -> int:
        assert self.witnessing is not None
        try:
            frame = offer_frame(self.witnessing, peer, conversation)
        except Exception:  # the ledger failed: the next interval tries again
            log.exception("no checkpoint could be offered to %s", peer)
            return 0
        return 0 if frame is None else int(self._send_witnessing(peer, frame))

    def _witness_frame(self, link: Link, frame: Any) -> None:
        """A witnessing frame from ``link.did``, opened in the channel of a session with it."""
        if self.witnessing is None:
            self.sealed.refused["witnessing_off"] += 1
            return
        try:
            reply = take(self.witnessing, link.did, frame, self.now_us())
            if reply is not None:
                self._send_witnessing(link.did, reply)
        except Exception:  # the ledger failed to save: the next offer tries again
            log.exception("a witnessing frame from %s could not be handled", link.did)

    def _send_witnessing(self, peer: str, frame: CheckpointOffer | CheckpointReply) -> bool:
        link = self._proven.get(peer) or self._dialled(peer)
        data = None if link is None else self._sealed(frame)
        if link is None or data is None:
            self.unrouted += 1
            return False
        self.outputs[type(frame).__name__] += 1
        self._out.writes.append((link, data))
        return True

    def _room(self, session_id: UUID) -> int | None:
        try:
            session = self.manager.session(session_id)
        except SessionError:
            return None
        return None if session.closed else self.manager.send_room(session_id)

    # ------------------------------------------------------------------ outputs
    def perform(self, outputs: list[Output], via: Link | None = None) -> None:
        """Route and seal ``outputs`` for the loop to write (``Send``) and deliver
        (``Deliver``). On the worker only: sealing touches the session channels."""
        if not self.on_worker():
            raise RuntimeError(
                "outputs are performed on the node's worker thread: hand the call that made "
                "them to it (await node.command(...))"
            )
        for output in outputs:
            if isinstance(output, Send):
                self.outputs[type(output.frame).__name__] += 1
                self._send(output, via)
            else:
                self.outputs["Deliver"] += 1
                self._out.delivered.append(output)

    def _send(self, output: Send, via: Link | None) -> None:
        frame, did = output.frame, output.peer_did
        if is_channel_frame(frame):
            link = self._proven.get(did) or self._dialled(did)
            data = None if link is None else self._sealed(frame)
        else:
            link = via if via is not None and via.did == did else None
            link = link or self._route(did)
            data = encode(frame)
        if link is None or data is None:
            self.unrouted += 1  # no connection (or no keys): lost, as on a network
            return
        self._out.writes.append((link, data))

    def _dialled(self, did: str) -> Link | None:
        """The connection this node opened to ``did`` (at an address it was given for it)."""
        link = self._claimed.get(did)
        return link if link is not None and link.outgoing else None

    def _sealed(self, frame: Any) -> bytes | None:
        try:
            return self.sealed.seal(frame, self.now_us())
        except SealRefused:
            return None  # counted in sealed.refused
