"""The hybrid handshake (SPEC-018 §2.1, §7): PQXDH with both sides signing, sans-I/O.

Three messages (docs/handshake.md has them byte by byte)::

    INIT      I -> R  identity, ephemeral EK_I, prekey ids, timestamp, ML-KEM ciphertext,
                      Sign(IK_I, th1)
    RESPONSE  R -> I  ephemeral EK_R, Sign(IK_R, th2), MAC(confirm_R, th2 || sig_R)
    CONFIRM   I -> R  MAC(confirm_I, th3)

Key agreement follows Signal's PQXDH: DH1 = DH(IK_I, SPK_R), DH2 = DH(EK_I, IK_R),
DH3 = DH(EK_I, SPK_R), DH4 = DH(EK_I, OPK_R) when a one-time prekey is used, and an ML-KEM-768
encapsulation to the responder's signed KEM prekey. Because this handshake is interactive, the
responder adds an ephemeral EK_R and DH5 = DH(EK_I, EK_R): the session keys are then fresh even
when an INIT is replayed, and forward secret against a later leak of the signed prekey.

Key schedule (BLAKE3 derive_key, one context per step; `||` is length-prefixed)::

    th1    = H(bundle signed part || opk || INIT without signature)
    ck1    = KDF(stage1, th1 || DH1 || DH2 || DH3 || DH4 || SS)
    th2    = H(th1 || sig_I || RESPONSE header, id, EK_R)
    master = KDF(master, ck1 || DH5 || th2)
    confirm_R, confirm_I = KDF(<each>, master)
    key_I->R || key_R->I || resumption secret || session id = KDF(channel keys, master)

Every input of the key schedule that an attacker could change in flight is in a transcript
hash, signed by its owner and mixed into the keys: stripping the KEM part or changing the
suite, a prekey, an identity or an ephemeral makes both MACs fail.

Neither object reads a clock or a socket: time is a value (microseconds since the epoch) and
randomness can be supplied (ephemerals, KEM backend) for deterministic test vectors.
"""

from __future__ import annotations

import heapq
import hmac
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from l2_session.domain.handshake.bundle import PrekeyBundle, PrekeySecrets
from l2_session.domain.handshake.errors import (
    HandshakeAuthenticationFailed,
    HandshakeStateError,
    PrekeyError,
    ReplayedMessage,
)
from l2_session.domain.handshake.kem import DEFAULT_BACKEND, KemBackend
from l2_session.domain.handshake.keys import (
    CONTEXT_CONFIRM_INITIATOR,
    CONTEXT_CONFIRM_RESPONDER,
    CONTEXT_MASTER,
    CONTEXT_STAGE1,
    LABEL_INIT_SIGNATURE,
    LABEL_RESPONSE_SIGNATURE,
    SessionKeys,
    check_signature,
    derive,
    dh,
    ed25519_private_to_x25519,
    ed25519_public_bytes,
    ed25519_public_to_x25519,
    expect_id,
    mac,
    session_keys,
    transcript_hash,
    x25519_public_bytes,
)
from l2_session.domain.handshake.wire import HANDSHAKE_ID_LEN, Confirm, Init, Response

# SPEC-018 §7.1 replay attacks: an INIT is accepted only within this distance of the
# responder's clock, and its ephemeral key is remembered for as long, so a replay is refused
# either as stale or as already seen.
MAX_CLOCK_SKEW_US = 120_000_000
REPLAY_CACHE_CAPACITY = 100_000


@dataclass
class _Stage:
    """What both sides know after INIT: the transcript hash and the first chaining key."""

    th1: bytes
    ck1: bytes

    @property
    def handshake_id(self) -> bytes:
        return self.th1[:HANDSHAKE_ID_LEN]


def _after_response(
    stage: _Stage, init: Init, response_prefix: bytes, dh5: bytes
) -> tuple[bytes, bytes]:
    th2 = transcript_hash(stage.th1, init.signature, response_prefix)
    return th2, derive(CONTEXT_MASTER, stage.ck1, dh5, th2)


class InitiatorHandshake:
    """The initiating side: ``start`` gives INIT; ``receive_response`` gives CONFIRM and keys."""

    def __init__(
        self,
        identity: Ed25519PrivateKey,
        bundle: PrekeyBundle,
        init: Init,
        ephemeral: X25519PrivateKey,
        stage: _Stage,
    ) -> None:
        self._identity, self._bundle, self._init = identity, bundle, init
        self._ephemeral, self._stage = ephemeral, stage
        self.done = False

    @property
    def handshake_id(self) -> bytes:
        return self._stage.handshake_id

    @classmethod
    def start(
        cls,
        identity: Ed25519PrivateKey,
        bundle: PrekeyBundle,
        *,
        now_us: int,
        expected_responder: bytes | None = None,
        kem: KemBackend = DEFAULT_BACKEND,
        ephemeral: X25519PrivateKey | None = None,
        use_one_time_prekey: bool = True,
        identity_dh: X25519PrivateKey | None = None,
    ) -> tuple[InitiatorHandshake, bytes]:
        """Check the responder's bundle, then build INIT. ``expected_responder`` is the Ed25519
        key the responder's DID names; a bundle under any other key is refused. ``identity_dh``
        is the identity's X25519 form, if the caller keeps it (saves a derivation per call)."""
        bundle.verify(now_us, expected_responder)
        ek = ephemeral or X25519PrivateKey.generate()
        opk = (
            bundle.one_time_prekeys[0] if use_one_time_prekey and bundle.one_time_prekeys else None
        )
        ciphertext, shared = kem.encapsulate(bundle.kem_prekey)
        me = ed25519_public_bytes(identity)
        unsigned = Init(
            bundle.suite,
            me,
            x25519_public_bytes(ek),
            bundle.identity,
            bundle.signed_prekey_id,
            bundle.kem_prekey_id,
            opk.prekey_id if opk else None,
            now_us,
            ciphertext,
            b"",
        )
        th1 = transcript_hash(
            bundle.signed_part(), opk.public if opk else b"", unsigned.signed_part()
        )
        init = replace(unsigned, signature=identity.sign(LABEL_INIT_SIGNATURE + th1))
        responder_x = ed25519_public_to_x25519(bundle.identity)
        dhs = (
            dh(identity_dh or ed25519_private_to_x25519(identity), bundle.signed_prekey, "DH1"),
            dh(ek, responder_x, "DH2"),
            dh(ek, bundle.signed_prekey, "DH3"),
            dh(ek, opk.public, "DH4") if opk else b"",
        )
        stage = _Stage(th1, derive(CONTEXT_STAGE1, th1, *dhs, shared))
        return cls(identity, bundle, init, ek, stage), init.encode()

    def receive_response(self, data: bytes) -> tuple[bytes, SessionKeys]:
        if self.done:
            raise HandshakeStateError("this handshake already completed or failed")
        response = Response.parse(data)
        expect_id("RESPONSE", response.handshake_id, self.handshake_id)
        # From here on a failure is an attack or a broken peer: the handshake is over.
        self.done = True
        dh5 = dh(self._ephemeral, response.responder_ephemeral, "DH5")
        th2, master = _after_response(self._stage, self._init, response.signed_part(), dh5)
        check_signature(
            self._bundle.identity, response.signature, LABEL_RESPONSE_SIGNATURE + th2, "RESPONSE"
        )
        expected = mac(derive(CONTEXT_CONFIRM_RESPONDER, master), th2, response.signature)
        if not hmac.compare_digest(expected, response.confirm):
            raise HandshakeAuthenticationFailed("RESPONSE key confirmation MAC does not match")
        unsigned = Confirm(self.handshake_id, b"")
        th3 = transcript_hash(th2, response.signature, response.confirm, unsigned.header_and_id())
        confirm = Confirm(self.handshake_id, mac(derive(CONTEXT_CONFIRM_INITIATOR, master), th3))
        prekey_ids = (self._bundle.signed_prekey_id, self._bundle.kem_prekey_id)
        return confirm.encode(), session_keys(master, th3, self._bundle.identity, True, prekey_ids)


class ReplayCache:
    """Ephemeral keys of recently accepted INITs, each kept until its timestamp leaves the
    skew window. Bounded: when full of live entries it refuses new INITs rather than forget one
    that could then be replayed (fail closed; the flood limiter keeps it from filling)."""

    def __init__(self, capacity: int = REPLAY_CACHE_CAPACITY) -> None:
        self.capacity = capacity
        self._live: set[bytes] = set()
        # A min-heap on expiry: purging costs O(log n) per expired entry, never a full scan.
        self._by_expiry: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._live)

    def _purge(self, now_us: int) -> None:
        # Strictly after expiry: at now == timestamp + skew the INIT still passes the timestamp
        # check, so its ephemeral must still be here.
        while self._by_expiry and self._by_expiry[0][0] < now_us:
            _, key = heapq.heappop(self._by_expiry)
            self._live.discard(key)

    def check(self, ephemeral: bytes, now_us: int) -> None:
        self._purge(now_us)
        if ephemeral in self._live:
            raise ReplayedMessage(f"INIT with ephemeral {ephemeral.hex()} was already accepted")
        if len(self._live) >= self.capacity:
            raise ReplayedMessage(
                f"replay cache full ({self.capacity} live entries): refusing new INITs until "
                "entries expire"
            )

    def remember(self, ephemeral: bytes, expiry_us: int) -> None:
        self._live.add(ephemeral)
        heapq.heappush(self._by_expiry, (expiry_us, ephemeral))


class PendingResponse:
    """A responder's handshake awaiting CONFIRM (SPEC-018 §3 ``handshake_received``)."""

    def __init__(
        self,
        handshake_id: bytes,
        master: bytes,
        th2: bytes,
        response: Response,
        peer: bytes,
        prekey_ids: tuple[int, int],
    ) -> None:
        self.handshake_id, self._master, self._th2 = handshake_id, master, th2
        self._response, self.peer_identity, self._prekey_ids = response, peer, prekey_ids
        self.done = False

    def receive_confirm(self, data: bytes) -> SessionKeys:
        if self.done:
            raise HandshakeStateError("this handshake already completed or failed")
        confirm = Confirm.parse(data)
        expect_id("CONFIRM", confirm.handshake_id, self.handshake_id)
        self.done = True
        th3 = transcript_hash(
            self._th2, self._response.signature, self._response.confirm, confirm.header_and_id()
        )
        expected = mac(derive(CONTEXT_CONFIRM_INITIATOR, self._master), th3)
        if not hmac.compare_digest(expected, confirm.confirm):
            raise HandshakeAuthenticationFailed("CONFIRM key confirmation MAC does not match")
        return session_keys(self._master, th3, self.peer_identity, False, self._prekey_ids)


class Responder:
    """A node's answering side: its identity, its current prekeys, and the replay cache.

    ``receive_init`` runs the cheap checks first — parse, addressee, prekey ids, timestamp,
    replay cache — then the signature, and only then the DH and ML-KEM work.
    """

    def __init__(
        self,
        identity: Ed25519PrivateKey,
        secrets: PrekeySecrets,
        bundle: PrekeyBundle,
        *,
        max_skew_us: int = MAX_CLOCK_SKEW_US,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        self._identity, self._identity_x = identity, ed25519_private_to_x25519(identity)
        self.identity = ed25519_public_bytes(identity)
        if bundle.identity != self.identity:
            raise PrekeyError("the bundle was signed by another identity than this responder's")
        self.secrets, self.bundle = secrets, bundle
        self.max_skew_us = max_skew_us
        self.replay_cache = replay_cache or ReplayCache()

    def receive_init(
        self, data: bytes, *, now_us: int, ephemeral: X25519PrivateKey | None = None
    ) -> tuple[bytes, PendingResponse]:
        init = Init.parse(data)
        s = self.secrets
        if init.responder_identity != self.identity:
            raise HandshakeAuthenticationFailed(
                f"INIT is addressed to {init.responder_identity.hex()}, not to this node"
            )
        if (init.signed_prekey_id, init.kem_prekey_id) != (s.signed_prekey_id, s.kem_prekey_id):
            raise PrekeyError(
                f"INIT uses prekeys {init.signed_prekey_id}/{init.kem_prekey_id}, current are "
                f"{s.signed_prekey_id}/{s.kem_prekey_id}: the initiator should refetch the bundle"
            )
        if now_us >= s.expires_at_us:
            raise PrekeyError("this node's prekeys have expired; publish fresh ones")
        if abs(now_us - init.timestamp_us) > self.max_skew_us:
            raise ReplayedMessage(
                f"INIT timestamp {init.timestamp_us} is {(now_us - init.timestamp_us) / 1e6:.1f}s "
                f"from this node's clock (at most {self.max_skew_us / 1e6:.0f}s allowed)"
            )
        self.replay_cache.check(init.initiator_ephemeral, now_us)
        opk_id = init.one_time_prekey_id
        if opk_id is not None and opk_id not in s.one_time_prekeys:
            raise PrekeyError(f"one-time prekey {opk_id} is unknown or already used")
        opk_private = s.one_time_prekeys[opk_id] if opk_id is not None else None
        th1 = transcript_hash(
            self.bundle.signed_part(),
            x25519_public_bytes(opk_private) if opk_private else b"",
            init.signed_part(),
        )
        check_signature(init.initiator_identity, init.signature, LABEL_INIT_SIGNATURE + th1, "INIT")
        # Authenticated: only now remember the INIT and spend the one-time prekey, so forged
        # INITs can neither fill the cache nor burn prekeys.
        self.replay_cache.remember(init.initiator_ephemeral, init.timestamp_us + self.max_skew_us)
        if opk_id is not None:
            self.secrets = s.without_one_time_prekey(opk_id)
        initiator_x = ed25519_public_to_x25519(init.initiator_identity)
        ek_i = init.initiator_ephemeral
        dhs = (
            dh(s.signed_prekey, initiator_x, "DH1"),
            dh(self._identity_x, ek_i, "DH2"),
            dh(s.signed_prekey, ek_i, "DH3"),
            dh(opk_private, ek_i, "DH4") if opk_private else b"",
        )
        shared = s.kem_prekey.decapsulate(init.kem_ciphertext)
        stage = _Stage(th1, derive(CONTEXT_STAGE1, th1, *dhs, shared))
        ek_r = ephemeral or X25519PrivateKey.generate()
        unsigned = Response(stage.handshake_id, x25519_public_bytes(ek_r), b"", b"")
        th2, master = _after_response(stage, init, unsigned.signed_part(), dh(ek_r, ek_i, "DH5"))
        signature = self._identity.sign(LABEL_RESPONSE_SIGNATURE + th2)
        confirm = mac(derive(CONTEXT_CONFIRM_RESPONDER, master), th2, signature)
        response = Response(stage.handshake_id, unsigned.responder_ephemeral, signature, confirm)
        pending = PendingResponse(
            stage.handshake_id,
            master,
            th2,
            response,
            init.initiator_identity,
            (s.signed_prekey_id, s.kem_prekey_id),
        )
        return response.encode(), pending
