"""``l2-session node``: one node as a process — its keys, its ledger, QUIC and μTCP listeners,
and a control socket through which a program (or a person with ``socat``) drives it.

    l2-session node --keys alice.keys --ledger alice.sqlite3 \\
        --quic 0.0.0.0:4433 --tcp 0.0.0.0:4433 --control alice.sock

On start it creates the key store if the file does not exist (or loads it), publishes the
prekeys the key store keeps (fresh ones, kept before they are published, when there are none
or half their month has passed; a spent one-time prekey leaves the store before the handshake
that spent it is answered), opens the ledger — recovering the
sessions a previous process left live (decision 16) — listens, and prints one JSON line on
stdout: ``{"ready": true, "did": ..., "bundle": HEX, "quic": [host, port], "tcp": [host,
port], "control": PATH}``. The bundle is what a peer needs to open a session with this node
(``peer`` below). SIGTERM or SIGINT stops it with its sessions left resumable; exit 0.

The control socket (a Unix socket, owner only) takes one JSON object per line and answers each
with one line: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

============  ====================================  ========================================
``op``        arguments                             answer
============  ====================================  ========================================
status                                              ``did``, ``sessions``, ``connections``
peer          ``did``, ``bundle`` (hex)             the peer's prekey bundle is known
dial          ``did``, ``quic`` / ``tcp`` [h, p]    ``transport``: ``quic`` or ``utcp``
establish     ``did``                               ``session`` (its id); the peer's bundle
                                                    fetched over the connection if unknown
wait          ``session``, ``state``, ``timeout``   once the session is in ``state``
send          ``session``, ``data`` (base64)        once the message is saved (queued)
receive       ``timeout`` (s)                       ``session``, ``seq``, ``data`` (base64)
sessions                                            ``sessions``: id, peer, state, transport
close         ``session``                           once the close is saved and sent
stop                                                the node stops, as on SIGTERM
============  ====================================  ========================================
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import gc
import json
import logging
import os
import signal
import stat
import sys
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from uuid import UUID

from l2_session.domain.session.config import SessionConfig
from l2_session.domain.session.errors import SessionError
from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.tools.errors import UsageError
from l2_session.transports.fallback import BACKOFF_BASE_S, BACKOFF_MAX_S, FallbackPolicy
from l2_session.transports.quic import QuicSettings
from l2_session.transports.tcp import NodeClosed
from l2_session.transports.tcp_worker import WITNESS_INTERVAL_US

from l2_session.node import Addresses, Node, parse_host_port

MAX_REQUEST_BYTES = 1 << 20  # one control request (a 64 KiB message is ~88 KiB of base64)
MAX_WAIT_S = 3600.0


@dataclass
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, option: str) -> Address:
        try:
            return cls(*parse_host_port(text))
        except ValueError:
            raise UsageError(
                f"{option} {text!r}: give HOST:PORT, with a port of 0 to 65535"
            ) from None


class Request(Exception):
    """A control request that cannot be done; its message is the answer's ``error``."""


class NodeProcess:
    """The node a process runs: built from its files by ``open``, driven by ``control``."""

    def __init__(
        self,
        store: KeyStore,
        ledger: SessionLedger,
        peers: dict[str, Addresses] | None = None,
        quic_settings: QuicSettings | None = None,
        witness_interval_s: float = WITNESS_INTERVAL_US / 1e6,
        config: SessionConfig | None = None,
        quic_retry_s: float = BACKOFF_BASE_S,
    ) -> None:
        self.store, self.ledger = store, ledger
        # The library's node, wired as every node is (l2_session/node.py): this process
        # adds the control socket around it. Its address book is the node's.
        self.front = Node(
            store, ledger, config=config, quic_settings=quic_settings,
            witness_interval_s=witness_interval_s,
        )  # fmt: skip
        self.front.peers.update(peers or {})
        self.node, self.manager = self.front.transport, self.front.manager
        # QUIC to a peer is tried again this long after it failed, doubling per failure in a
        # row (transports/fallback.py); its sessions move back once it works (decision 24).
        self.node.fallback = FallbackPolicy(
            backoff_base_s=quic_retry_s, backoff_max_s=max(BACKOFF_MAX_S, quic_retry_s)
        )
        self.timeline, self.directory = self.front.timeline, self.front.directory
        self.bundle = self.front.bundle
        self.stopped = asyncio.Event()

    @property
    def did(self) -> str:
        return self.store.identity.did

    # ------------------------------------------------------------------ control
    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One control connection: a request per line, an answer per line, in order."""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while line := await reader.readline():
                answer = await self.answer(line)
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        writer.close()

    async def answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise Request('a request is a JSON object with an "op"')
            op = request.get("op")
            handler = self._ops.get(op) if isinstance(op, str) else None
            if handler is None:
                raise Request(f"unknown op {op!r}; one of {', '.join(sorted(self._ops))}")
            return {"ok": True, **(await handler(request))}
        except json.JSONDecodeError as error:
            return {"ok": False, "error": f"not JSON: {error}"}
        except TimeoutError:  # before OSError, of which it is a kind
            return {"ok": False, "error": "timed out"}
        except (Request, SessionError, NodeClosed, ConnectionError, OSError) as error:
            return {"ok": False, "error": str(error) or type(error).__name__}

    @functools.cached_property
    def _ops(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]]:
        return {
            "status": self._status, "peer": self._peer, "dial": self._dial,
            "establish": self._establish, "wait": self._wait, "send": self._send,
            "receive": self._receive, "delivered": self._delivered, "sessions": self._sessions,
            "close": self._close,
            "checkpoint": self._checkpoint, "witnessed": self._witnessed, "stop": self._stop,
        }  # fmt: skip

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        sessions = await self.node.query(lambda: len(self.manager))
        links = sorted(link.kind for link in self.node.connections.open)
        witnessing = self.node.worker.witnessing
        counts = await self.node.query(lambda: dict(witnessing.counts) if witnessing else {})
        return {
            "did": self.did, "sessions": sessions, "connections": links,
            "ledger_id": self.ledger.ledger_id, "witnessing": counts,
        }  # fmt: skip

    async def _peer(self, request: dict[str, Any]) -> dict[str, Any]:
        did, bundle = _text(request, "did"), _hex(request, "bundle")
        try:
            self.directory.publish_bundle(did, bundle, self.timeline.now_us())
        except Exception as error:  # a bundle that does not decode, or is not the DID's
            raise Request(f"bundle for {did} refused: {error}") from error
        return {}

    async def _dial(self, request: dict[str, Any]) -> dict[str, Any]:
        did = _text(request, "did")
        quic, tcp = _address(request, "quic"), _address(request, "tcp")
        book = self.front.peers
        if quic is None and tcp is None:
            if did not in book:
                raise Request(
                    f'dial needs "quic" or "tcp": [host, port]; {did} is not in the address '
                    "book (--peer, or [peers] in the config)"
                )
            quic, tcp = book[did].quic, book[did].tcp
        else:
            book[did] = Addresses(quic, tcp)
        transport = await self.node.dial(did, quic=quic, tcp=tcp)
        # The peer's prekey bundle, if nobody handed it over: what a full handshake needs — a
        # new session's, or the one a resumption the peer refused falls back to (decision 16).
        await self.front.connect(did)
        return {"transport": transport}

    async def _establish(self, request: dict[str, Any]) -> dict[str, Any]:
        did = _text(request, "did")
        await self.front.connect(did)  # dialled from the address book unless connected
        session = await self.node.establish(did)
        return {"session": str(session)}

    async def _wait(self, request: dict[str, Any]) -> dict[str, Any]:
        sid, state = _session(request), _text(request, "state")
        timeout = _seconds(request)
        await self.node.until(lambda: self.manager.session(sid).state == state, timeout)
        return {}

    async def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        data = request.get("data")
        try:
            payload = base64.b64decode(data, validate=True) if isinstance(data, str) else None
        except binascii.Error as error:
            raise Request(f'"data" is not base64: {error}') from None
        if payload is None:
            raise Request('send needs "data": the message, base64')
        await self.node.send(_session(request), payload)
        return {}

    async def _receive(self, request: dict[str, Any]) -> dict[str, Any]:
        message = await asyncio.wait_for(self.node.receive(), _seconds(request))
        return {
            "session": str(message.session_id), "seq": message.seq,
            "data": base64.b64encode(message.payload).decode(),
        }  # fmt: skip

    async def _delivered(self, request: dict[str, Any]) -> dict[str, Any]:
        """The messages of a session saved in the ledger after ``after`` (decision 21: what
        ``receive`` does not hand again after a restart)."""
        sid = _session(request)
        after, limit = request.get("after", 0), request.get("limit", 1000)
        try:
            messages = await self.front.delivered(sid, after=after, limit=limit)
        except ValueError as error:
            raise Request(str(error)) from None
        return {
            "session": str(sid),
            "messages": [
                {"seq": m.seq, "data": base64.b64encode(m.data).decode()} for m in messages
            ],
        }

    async def _sessions(self, request: dict[str, Any]) -> dict[str, Any]:
        def listed() -> list[dict[str, Any]]:
            return [
                {"id": str(s.id), "peer": s.peer_did, "state": s.state, "transport": s.transport}
                for s in self.manager.sessions()
            ]

        return {"sessions": await self.node.query(listed)}

    async def _checkpoint(self, request: dict[str, Any]) -> dict[str, Any]:
        """Sign and record a checkpoint of this node's ledger as it is now (a C2SP note)."""
        return {"checkpoint": await self.node.query(lambda: self.ledger.checkpoint().to_text())}

    async def _witnessed(self, request: dict[str, Any]) -> dict[str, Any]:
        witnessing = self.node.worker.witnessing
        assert witnessing is not None
        return {"witnessed": await self.node.query(witnessing.witnessed)}

    async def _close(self, request: dict[str, Any]) -> dict[str, Any]:
        sid = _session(request)
        await self.node.command(lambda: self.manager.close(sid, self.timeline.now_us()))
        return {}

    async def _stop(self, request: dict[str, Any]) -> dict[str, Any]:
        self.stopped.set()
        return {}


# ---------------------------------------------------------------------------- requests
def _text(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise Request(f'"{name}" is missing or not a string')
    return value


def _hex(request: dict[str, Any], name: str) -> bytes:
    try:
        return bytes.fromhex(_text(request, name))
    except ValueError:
        raise Request(f'"{name}" is not hex') from None


def _session(request: dict[str, Any]) -> UUID:
    try:
        return UUID(_text(request, "session"))
    except ValueError:
        raise Request('"session" is not a session id') from None


def _seconds(request: dict[str, Any]) -> float:
    value = request.get("timeout", 10.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_WAIT_S:
        raise Request(f'"timeout" must be seconds, over 0 and at most {MAX_WAIT_S:.0f}')
    return float(value)


def _address(request: dict[str, Any], name: str) -> tuple[str, int] | None:
    value = request.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, list) or len(value) != 2 or not isinstance(value[0], str)
        or isinstance(value[1], bool) or not isinstance(value[1], int)
    ):  # fmt: skip
        raise Request(f'"{name}" must be [host, port]')
    return value[0], value[1]


# ---------------------------------------------------------------------------- the process
def open_keys(path: Path) -> KeyStore:
    return KeyStore.load(path) if path.exists() else KeyStore.create(path)


async def serve(settings: NodeSettings) -> None:
    store = open_keys(settings.keys)
    ledger = SessionLedger(
        settings.ledger, identity=store.identity, storage_key=store.storage_key,
        durability=settings.durability,  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        process = NodeProcess(
            store,
            ledger,
            settings.peers,
            settings.quic_settings,
            settings.witness_interval_s,
            settings.session,
            settings.quic_retry_s,
        )
        await _run(process, settings.quic, settings.tcp, settings.control)
    finally:
        ledger.close()


async def _run(
    process: NodeProcess, quic: Address | None, tcp: Address | None, control: Path
) -> None:
    node = process.node
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.stopped.set)
    listening: dict[str, Any] = {}
    servers: list[Any] = []
    try:
        if quic is not None:
            listening["quic"] = list(await node.serve_quic(quic.host, quic.port))
        if tcp is not None:
            server = await node.serve(tcp.host, tcp.port)
            servers.append(server)
            listening["tcp"] = list(server.sockets[0].getsockname()[:2])
        node.start_timers()
        # Started: what exists now (modules, keys, the recovered sessions' classes) leaves the
        # collector's view, so that a full collection does not hold the loop for 10-15 ms
        # scanning it (docs/benchmarks.md, "Messages").
        gc.collect()
        gc.freeze()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(control.stat().st_mode):
                control.unlink()  # a socket left by a process that was killed
        old_umask = os.umask(0o177)  # the control socket: its owner's only
        try:
            servers.append(await asyncio.start_unix_server(
                process.control, path=str(control), limit=MAX_REQUEST_BYTES
            ))  # fmt: skip
        finally:
            os.umask(old_umask)
        print(json.dumps({
            "ready": True, "did": process.did, "bundle": process.bundle.hex(),
            **listening, "control": str(control),
        }), flush=True)  # fmt: skip
        await process.stopped.wait()
    finally:
        for server in servers:
            server.close()
        await node.close()
        with contextlib.suppress(FileNotFoundError):
            control.unlink()


SETTINGS = (
    "keys", "ledger", "quic", "tcp", "control", "durability", "log_format", "peers",
    "quic_keepalive_s", "quic_idle_timeout_s", "quic_retry_s", "witness_interval_s", "session",
)  # fmt: skip


@dataclass
class NodeSettings:
    """What a node runs with: flags over the ``--config`` TOML file over defaults."""

    keys: Path
    ledger: str
    quic: Address | None
    tcp: Address | None
    control: Path
    durability: str = "full"
    log_format: str = "text"
    peers: dict[str, Addresses] = field(default_factory=dict)
    quic_settings: QuicSettings = field(default_factory=QuicSettings)
    witness_interval_s: float = WITNESS_INTERVAL_US / 1e6
    session: SessionConfig = field(default_factory=SessionConfig)
    quic_retry_s: float = BACKOFF_BASE_S


def settings_from(args: Any) -> NodeSettings:
    config = _read_config(args.config) if args.config else {}
    where = f"--config {args.config}: " if args.config else ""

    def value(name: str) -> Any:
        given = getattr(args, name)
        if given is not None:
            return given
        found = config.get(name)
        if found is not None and not isinstance(found, str):
            raise UsageError(f"{where}{name} must be a string, got {found!r}")
        return found

    ledger = value("ledger") or os.environ.get("L2S_LEDGER")
    missing = [f"--{n}" for n, v in (("keys", value("keys")), ("ledger", ledger),
                                     ("control", value("control"))) if not v]  # fmt: skip
    if missing:
        raise UsageError(f"give {', '.join(missing)} (as flags, or in the --config file)")
    quic, tcp = value("quic"), value("tcp")
    if quic is None and tcp is None:
        raise UsageError("give --quic HOST:PORT, --tcp HOST:PORT, or both: where to listen")
    durability = value("durability") or "full"
    log_format = value("log_format") or "text"
    for name, got, allowed in (("durability", durability, ("full", "normal")),
                               ("log_format", log_format, ("text", "json"))):  # fmt: skip
        if got not in allowed:
            raise UsageError(f"{where}{name} {got!r}: one of {', '.join(allowed)}")
    default = QuicSettings()
    timers: dict[str, float] = {}
    for name in ("quic_keepalive_s", "quic_idle_timeout_s"):
        value_s = config.get(name, getattr(default, name.removeprefix("quic_")))
        if isinstance(value_s, bool) or not isinstance(value_s, int | float):
            raise UsageError(f"{where}{name} must be seconds, got {value_s!r}")
        timers[name] = float(value_s)
    try:
        quic_settings = replace(
            default,
            keepalive_s=timers["quic_keepalive_s"],
            idle_timeout_s=timers["quic_idle_timeout_s"],
        )
    except ValueError as error:
        raise UsageError(f"{where}{error}") from None
    witness_interval_s = _setting_seconds(
        config, "witness_interval_s", WITNESS_INTERVAL_US / 1e6, where
    )
    quic_retry_s = _setting_seconds(config, "quic_retry_s", BACKOFF_BASE_S, where)
    session = _session_config(config.get("session", {}), where)
    peers = _peers_from_config(config.get("peers", {}), where)
    for flag in args.peer or []:
        did, book = _peer_from_flag(flag)
        peers[did] = book
    return NodeSettings(
        keys=Path(value("keys")), ledger=str(ledger),
        quic=None if quic is None else Address.parse(quic, "--quic"),
        tcp=None if tcp is None else Address.parse(tcp, "--tcp"),
        control=Path(value("control")), durability=durability, log_format=log_format,
        peers=peers, quic_settings=quic_settings, witness_interval_s=witness_interval_s,
        session=session, quic_retry_s=quic_retry_s,
    )  # fmt: skip


def _setting_seconds(config: dict[str, Any], name: str, default: float, where: str) -> float:
    """The setting ``name`` of the config file: seconds above 0, else ``default``."""
    seconds = config.get(name, default)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise UsageError(f"{where}{name} must be seconds above 0, got {seconds!r}")
    return float(seconds)


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except OSError as error:
        raise UsageError(f"--config {path}: cannot read it ({error.strerror})") from error
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"--config {path} is not TOML: {error}") from error
    unknown = sorted(set(config) - set(SETTINGS))
    if unknown:
        raise UsageError(
            f"--config {path}: unknown setting {', '.join(unknown)}; known: {', '.join(SETTINGS)}"
        )
    return config


def _session_config(table: Any, where: str) -> SessionConfig:
    """``[session]``: SessionConfig's fields (seconds for durations), e.g. for short timers."""
    if not isinstance(table, dict):
        raise UsageError(f"{where}[session] must be a table of SessionConfig fields")
    known = {f.name for f in fields(SessionConfig)}
    unknown = sorted(set(table) - known)
    if unknown:
        known_list = ", ".join(sorted(known))
        raise UsageError(
            f"{where}[session]: unknown field {', '.join(unknown)}; known: {known_list}"
        )
    try:
        return SessionConfig(**table)
    except ValueError as error:  # ConfigError names the field and what it must be
        raise UsageError(f"{where}[session]: {error}") from None


def _peers_from_config(table: Any, where: str) -> dict[str, Addresses]:
    if not isinstance(table, dict):
        raise UsageError(f"{where}[peers] must be a table of DID = {{ quic = ..., tcp = ... }}")
    peers: dict[str, Addresses] = {}
    for did, entry in table.items():
        if not isinstance(entry, dict) or not set(entry) <= {"quic", "tcp"} or not entry:
            raise UsageError(f'{where}peer {did}: give {{ quic = "HOST:PORT", tcp = ... }}')
        peers[did] = _book(did, entry.get("quic"), entry.get("tcp"))
    return peers


def _peer_from_flag(flag: str) -> tuple[str, Addresses]:
    did, sep, rest = flag.partition("=")
    addresses: dict[str, str] = {}
    for part in rest.split(",") if sep else []:
        kind, _, address = part.partition(":")
        if kind not in ("quic", "tcp") or kind in addresses:
            raise UsageError(f"--peer {flag}: give DID=quic:HOST:PORT,tcp:HOST:PORT")
        addresses[kind] = address
    if not did or not addresses:
        raise UsageError(f"--peer {flag}: give DID=quic:HOST:PORT,tcp:HOST:PORT")
    return did, _book(did, addresses.get("quic"), addresses.get("tcp"))


def _book(did: str, quic: Any, tcp: Any) -> Addresses:
    def parse(text: Any, kind: str) -> tuple[str, int] | None:
        if text is None:
            return None
        if not isinstance(text, str):
            raise UsageError(f'peer {did}: {kind} must be "HOST:PORT"')
        address = Address.parse(text, f"peer {did} {kind}")
        return address.host, address.port

    return Addresses(parse(quic, "quic"), parse(tcp, "tcp"))


class JsonLines(logging.Formatter):
    """A log record as one JSON object: time, level, logger, message (and the error)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage(),
        }  # fmt: skip
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def _logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines() if log_format == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )  # fmt: skip
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(args: Any) -> int:
    settings = settings_from(args)
    _logging(settings.log_format)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as `l2-session node`")
