"""``l2-session demo``: two node processes on loopback, the whole story, told as it happens.

Alice and Bob are two ``l2-session node`` processes, each with its own key store (a fresh
Ed25519 identity and its did:key) and its own signed SQLite ledger, in ``--dir``. Alice
reaches Bob through two relays this process runs (tools/relay.py) — one for UDP (QUIC), one
for TCP (μTCP) — so that the demo can break the network as a real one breaks. The story:

1. a hybrid post-quantum session (X25519 + ML-KEM-768, both ends Ed25519-authenticated)
   established over QUIC;
2. messages both ways;
3. a key rotation, on timers shortened for the demo;
4. a partition: heartbeats go unanswered, the session is ``degraded``, messages sent meanwhile
   are queued; the network heals, the session is ``established`` again and they arrive;
5. UDP cut: the QUIC link dies, and the session carries on over μTCP (the fallback is a
   ledger event); UDP passes again, and the session moves back to QUIC (another);
6. SIGKILL of Alice right after a message was saved; a new process over her files resumes the
   session with fresh keys, and the message arrives exactly once;
7. both nodes stopped; each ledger verified (every hash, signature, chain link, tree node) and
   checked against the checkpoints the other node witnessed;
8. Alice's session's timeline, as her ledger tells it; then the commands to try next.

Every step checks what it tells, against the nodes' answers and their ledgers; the demo exits 1
with what did not happen if a step fails, 0 when all did. It never reuses files: ``--dir``
must not hold a node's files already.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

from l2_session.infrastructure.keystore import KeyStore
from l2_session.infrastructure.ledger import SessionLedger
from l2_session.infrastructure.ledger.verify import verify
from l2_session.projections.history import LedgerHistory, Transition
from l2_session.tools.errors import UsageError
from l2_session.tools.node_control import ask
from l2_session.tools.relay import Relays
from rich.console import Console
from rich.table import Table

T = TypeVar("T")
NAMES = ("alice", "bob")
# Timers shortened so that the story takes seconds: heartbeats every second, degraded after
# two unanswered; keys rotated 4 s after they were made; witnesses every 2 s; the QUIC link
# given up 5 s after its peer fell silent, and QUIC tried again 1 s after it failed.
SESSION = {
    "heartbeat_interval": 1.0, "heartbeat_tolerance": 2, "heartbeat_response_timeout": 0.5,
    "ttl": 20.0, "rotation_window": 16.0,
}  # fmt: skip
QUIC_IDLE_S = 5.0
QUIC_RETRY_S = 1.0
WAIT_S = 20.0  # the longest any step may take before the demo says it did not happen


class DemoFailed(Exception):
    """A step that did not happen as told; its message says what."""


class NodeRun:
    """One ``l2-session node`` process, its files in the demo's folder."""

    def __init__(self, folder: Path, name: str, store: KeyStore) -> None:
        self.folder, self.name, self.did = folder, name, store.identity.did
        self.config = folder / f"{name}.toml"
        self.control = folder / f"{name}.sock"
        self.ledger = folder / f"{name}.sqlite3"
        self.process: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}

    def write_config(self, peers: dict[str, tuple[tuple[str, int], tuple[str, int]]]) -> None:
        lines = [
            f'keys = "{self.name}.keys"', f'ledger = "{self.name}.sqlite3"',
            f'control = "{self.name}.sock"', 'quic = "127.0.0.1:0"', 'tcp = "127.0.0.1:0"',
            'durability = "normal"', "quic_keepalive_s = 1.0",
            f"quic_idle_timeout_s = {QUIC_IDLE_S}", f"quic_retry_s = {QUIC_RETRY_S}",
            "witness_interval_s = 2.0", "[session]",
            *(f"{k} = {v}" for k, v in SESSION.items()), "[peers]",
        ]  # fmt: skip
        for did, (quic, tcp) in peers.items():
            lines.append(f'"{did}" = {{ quic = "{quic[0]}:{quic[1]}", tcp = "{tcp[0]}:{tcp[1]}" }}')
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        log = (self.folder / f"{self.name}.log").open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "l2_session.tools.cli", "node", "--config", self.config.name],
            cwd=self.folder, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise DemoFailed(f"{self.name}'s node did not start (its log: {log.name})")
        self.ready = json.loads(line)

    def ask(self, op: str, wait_s: float = WAIT_S, **arguments: Any) -> dict[str, Any]:
        try:
            return ask(self.control, op, wait_s + 5, **arguments)
        except UsageError as error:
            raise DemoFailed(f"{self.name}: {error}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.kill()


def run_demo(folder: Path, console: Console | None = None) -> bool:
    """The story in ``folder``; True if every step happened as told."""
    # In a pipe (a log, a test), lines as wide as they need: one line per step.
    width = None if sys.stdout.isatty() else 140
    console = console or Console(highlight=False, emoji=False, width=width)
    taken = [p.name for n in NAMES for p in folder.glob(f"{n}.*")] if folder.exists() else []
    if taken:
        raise UsageError(
            f"{folder} already holds {', '.join(sorted(taken))}; the demo never reuses a "
            "node's files — remove them, or give --dir a new folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    story = Story(folder, console)
    started = time.monotonic()
    try:
        story.tell()
    except DemoFailed as failure:
        console.print(f"[bold red]✗ {failure}[/]")
        console.print(f"  the nodes' logs: {folder}/alice.log, {folder}/bob.log")
        return False
    finally:
        story.close()
    console.print(
        f"\n[bold green]All of it happened as told[/], in {time.monotonic() - started:.1f} s."
    )
    story.next_commands()
    return True


class Story:
    def __init__(self, folder: Path, console: Console) -> None:
        self.folder, self.console = folder, console
        stores = {n: KeyStore.create(folder / f"{n}.keys") for n in NAMES}
        self.alice, self.bob = (NodeRun(folder, n, stores[n]) for n in NAMES)
        self.relays: Relays | None = None
        self.session = ""  # Alice's session's id
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------ telling
    def say(self, text: str) -> None:
        self.console.print(f"[dim]{time.monotonic() - self.t0:5.1f} s[/]  {text}", soft_wrap=True)

    def step(self, title: str) -> None:
        self.console.print(f"\n[bold]{title}[/]")

    def tell(self) -> None:
        self.start_nodes()
        self.establish()
        self.exchange()
        self.rotation()
        self.partition()
        self.fallback()
        self.kill_and_resume()
        self.verify_both()
        self.timeline()

    def close(self) -> None:
        for node in (self.alice, self.bob):
            node.stop()
        if self.relays is not None:
            self.relays.close()

    # ------------------------------------------------------------------ the steps
    def start_nodes(self) -> None:
        self.step("Two nodes, two processes")
        bob, alice = self.bob, self.alice
        bob.write_config({})
        bob.start()
        quic, tcp = bob.ready["quic"], bob.ready["tcp"]
        self.relays = Relays((quic[0], quic[1]), (tcp[0], tcp[1]))
        alice.write_config({bob.did: (self.relays.quic, self.relays.tcp)})
        alice.start()
        for node in (alice, bob):
            assert node.process is not None
            self.say(
                f"{node.name}: pid {node.process.pid}, {node.did[:20]}…, QUIC udp/"
                f"{node.ready['quic'][1]}, μTCP tcp/{node.ready['tcp'][1]}, "
                f"ledger {node.ledger.name}"
            )
        self.say("alice reaches bob through relays this demo can cut (UDP and TCP)")

    def establish(self) -> None:
        self.step("1. A post-quantum session")
        began = time.monotonic()
        self.session = self.alice.ask("establish", did=self.bob.did)["session"]
        self.alice.ask("wait", session=self.session, state="established", timeout=WAIT_S)
        took = (time.monotonic() - began) * 1000
        established = self.transitions(self.alice, lambda t: t.event == "Established")
        if not established:
            raise DemoFailed("alice's ledger records no Established event for the session")
        transport = self.alice_session()["transport"]
        if transport != "quic":
            raise DemoFailed(f"the session runs over {transport}, not QUIC")
        self.say(
            f"session {self.session[:8]}… established over QUIC in {took:.0f} ms: X25519 + "
            "ML-KEM-768 hybrid key exchange, each end Ed25519-authenticated by its did:key"
        )

    def exchange(self) -> None:
        self.step("2. Messages")
        texts = [b"hello, bob", b"a second message", b"and a third"]
        for text in texts:
            self.alice.ask("send", session=self.session, data=_b64(text))
        got = [self.receive(self.bob) for _ in texts]
        if got != texts:
            raise DemoFailed(f"bob received {got}, not {texts}")
        bob_session = self.bob.ask("sessions")["sessions"][0]["id"]
        self.bob.ask("send", session=bob_session, data=_b64(b"hello, alice"))
        if self.receive(self.alice) != b"hello, alice":
            raise DemoFailed("alice did not receive bob's answer")
        self.say("3 messages alice → bob, 1 back: in order, each saved before it left")

    def rotation(self) -> None:
        self.step("3. Key rotation")
        rotated = self.until(
            lambda: self.transitions(
                self.alice, lambda t: t.state_before == "rotating" and t.state == "established"
            ),
            "alice's session to rotate its keys",
        )
        keys = self.alice_keys()
        self.say(
            f"keys rotated {SESSION['ttl'] - SESSION['rotation_window']:.0f} s after they were "
            f"made (ttl {SESSION['ttl']:.0f} s, window {SESSION['rotation_window']:.0f} s): "
            f"key ids {' → '.join(keys)} (ledger position {rotated[0].position})"
        )

    def partition(self) -> None:
        self.step("4. A partition")
        assert self.relays is not None
        self.relays.partition()
        self.say("network cut both ways")
        self.until(lambda: self.alice_session()["state"] == "degraded", "alice's session degraded")
        self.say("heartbeats unanswered: alice's session is degraded")
        queued = [b"sent during the partition", b"this one too"]
        for text in queued:
            self.alice.ask("send", session=self.session, data=_b64(text))
        self.say(f"{len(queued)} messages sent meanwhile: saved, queued")
        self.relays.heal()
        self.say("network healed")
        self.until(lambda: self.alice_session()["state"] == "established", "re-established")
        got = [self.receive(self.bob) for _ in queued]
        if got != queued:
            raise DemoFailed(f"after the partition bob received {got}, not {queued}")
        self.say("established again; the queued messages arrived, in order")

    def fallback(self) -> None:
        self.step("5. UDP cut: fallback to TCP, and back to QUIC")
        assert self.relays is not None
        self.relays.cut_udp()
        self.say(f"UDP dropped (TCP passes): QUIC's link gives up after {QUIC_IDLE_S:.0f} s silent")
        self.until(
            lambda: (
                self.alice_session()["transport"] == "utcp"
                and self.alice_session()["state"] == "established"
            ),
            "the session over μTCP",
        )
        switched = self.moved(1, "μTCP")
        self.say(
            f"same session over μTCP (TransportSwitched at ledger position "
            f"{switched.position}); messages flow"
        )
        self.relays.heal()
        self.say(
            f"UDP passes again: alice tries QUIC once its back-off is over ({QUIC_RETRY_S:.0f} s "
            "after the first failure, doubling with each)"
        )
        self.until(
            lambda: self.alice_session()["transport"] == "quic", "the session back over QUIC"
        )
        back = self.moved(2, "QUIC")
        self.say(
            f"same session over QUIC again, its link checked under the session's keys "
            f"(TransportSwitched at ledger position {back.position}); messages flow"
        )

    def moved(self, switches: int, over: str) -> Transition:
        """Alice's ledger's ``switches``-th ``TransportSwitched`` event, once a message sent
        after it (over ``over``) reached Bob."""
        switched = self.transitions(self.alice, lambda t: t.event == "TransportSwitched")
        if len(switched) < switches:
            raise DemoFailed(f"alice's ledger records no TransportSwitched to {over}")
        text = f"over {over} now".encode()
        self.alice.ask("send", session=self.session, data=_b64(text))
        if self.receive(self.bob) != text:
            raise DemoFailed(f"bob did not receive the message sent over {over}")
        return switched[switches - 1]

    def kill_and_resume(self) -> None:
        self.step("6. SIGKILL, and resumption from the ledger")
        last = b"saved just before the kill"
        self.alice.ask("send", session=self.session, data=_b64(last))
        self.alice.kill()
        self.say("alice's message saved; alice's process killed (SIGKILL)")
        self.alice.start()
        assert self.alice.process is not None
        recovered = self.alice_session()
        self.say(
            f"a new alice process (pid {self.alice.process.pid}): the session is "
            f"{recovered['state']}"
        )
        self.alice.ask("dial", did=self.bob.did)
        self.until(lambda: self.alice_session()["state"] == "established", "the session resumed")
        resumed = self.transitions(self.alice, lambda t: t.trigger == "initiate_resumption()")
        if not resumed:
            raise DemoFailed("alice's ledger records no resumption")
        if self.receive(self.bob) != last:
            raise DemoFailed("bob did not receive the message saved before the kill")
        with contextlib.suppress(DemoFailed):
            again = self.receive(self.bob, wait_s=1.5)
            raise DemoFailed(f"bob received {again!r} a second time")
        self.say("resumed with fresh keys (no new KEM exchange); the message arrived once")

    def verify_both(self) -> None:
        self.step("7. Both ledgers verified, and witnessed by each other")
        self.alice.stop()
        self.bob.stop()
        for node, other in ((self.alice, self.bob), (self.bob, self.alice)):
            report = verify(
                str(node.ledger), trusted_signers=[node.did], witnesses=[str(other.ledger)]
            )
            if not report.ok:
                raise DemoFailed(f"{node.name}'s ledger does not verify:\n{report.summary()}")
            if report.witnessed_checkpoints < 1:
                raise DemoFailed(f"{other.name} witnessed no checkpoint of {node.name}'s ledger")
            self.say(
                f"{node.name}: {report.events_checked} events, every hash, signature, chain "
                f"link and tree node OK; {report.witnessed_checkpoints} of its checkpoints "
                f"witnessed by {other.name}, each consistent"
            )

    def timeline(self) -> None:
        self.step("8. Alice's session, as her ledger tells it")
        table = Table("pos", "time", "event", "state", "reason", box=None)
        steps = self.transitions(self.alice, lambda t: True)
        first = steps[0].at_us
        for t in steps:
            if t.event in ("HeartbeatSent", "HeartbeatAnswered", "CountersReserved"):
                continue
            moved = (
                t.state if t.state_before in (None, t.state) else f"{t.state_before} → {t.state}"
            )
            table.add_row(
                str(t.position), f"+{(t.at_us - first) / 1e6:.2f} s", t.event, moved or "",
                t.reason or "",
            )  # fmt: skip
        self.console.print(table)

    def next_commands(self) -> None:
        d, cli = shlex.quote(str(self.folder)), _cli_name()
        self.console.print("\n[bold]Next, on the ledgers the demo left[/]")
        for line in (
            f"{cli} audit verify {d}/alice.sqlite3 --witness {d}/bob.sqlite3",
            f"{cli} audit replay {d}/alice.sqlite3 --at 10",
            f"{cli} audit timeline {d}/alice.sqlite3 --format html --out {d}/timeline.html",
            f"{cli} export {d}/alice.sqlite3 --out {d}/bundle",
            f"{cli} audit verify-bundle {d}/bundle",
        ):
            self.console.print(f"  {line}", soft_wrap=True)

    # ------------------------------------------------------------------ helpers
    def alice_session(self) -> dict[str, Any]:
        sessions = {s["id"]: s for s in self.alice.ask("sessions")["sessions"]}
        if self.session not in sessions:
            raise DemoFailed(f"alice's node does not list session {self.session}")
        found: dict[str, Any] = sessions[self.session]
        return found

    def alice_keys(self) -> list[str]:
        """The ids of the keys alice's session has had, in order, as its ``Established``
        events record them (the keys themselves are sealed in the ledger)."""
        ledger = SessionLedger(self.alice.ledger, create=False)
        try:
            events = ledger.events.get(UUID(self.session))
            return [getattr(e, "key_id", "") for e in events if type(e).__name__ == "Established"]
        finally:
            ledger.close()

    def transitions(self, node: NodeRun, wanted: Callable[[Transition], bool]) -> list[Transition]:
        """The steps of alice's session in ``node``'s ledger that ``wanted`` picks."""
        with _history(node.ledger) as history:
            return [t for t in history.timeline(self.session) if wanted(t)]

    def receive(self, node: NodeRun, wait_s: float = WAIT_S) -> bytes:
        answer = node.ask("receive", wait_s, timeout=wait_s)
        return base64.b64decode(answer["data"])

    def until(self, condition: Callable[[], T], what: str) -> T:
        deadline = time.monotonic() + WAIT_S
        while True:
            result = condition()
            if result:
                return result
            if time.monotonic() > deadline:
                raise DemoFailed(f"{what}: did not happen within {WAIT_S:.0f} s")
            time.sleep(0.05)


@contextlib.contextmanager
def _history(path: Path) -> Iterator[LedgerHistory]:
    ledger = SessionLedger(path, create=False)  # read-only, beside the running node
    try:
        yield LedgerHistory(ledger)
    finally:
        ledger.close()


def _cli_name() -> str:
    """How the user runs this CLI: ``l2-session`` if that is on the PATH, else its path (as
    ``make demo`` runs it: ``.venv/bin/l2-session``)."""
    script = Path(sys.executable).with_name("l2-session")
    found = shutil.which("l2-session")
    if found is not None and Path(found).resolve() == script.resolve():
        return "l2-session"
    with contextlib.suppress(ValueError):
        return shlex.quote(str(script.relative_to(Path.cwd())))
    return shlex.quote(str(script))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run it as `l2-session demo`")
