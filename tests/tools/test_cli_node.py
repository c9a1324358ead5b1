"""``l2-session node``: two node processes with real keys and ledgers on disk, over QUIC on
loopback, driven through their control sockets as a program would — a session, messages both
ways, a SIGKILL of one in the middle of a stream, its restart from its files, the session
resumed and every message delivered once and in order, with Bob's prekey bundle fetched over
the connection; and the control socket's answers to requests that are wrong."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from clirun import CLI, refused, run
from l2_session.infrastructure.keystore import KeyStore
from udp_chaos import ChaosRelay

from l2_session.node import ONE_TIME_PREKEYS, PREKEYS_VALID_US, node_prekeys

WAIT_S = 20.0


class Node:
    """One ``l2-session node`` process and a connection to its control socket."""

    def __init__(self, work: Path, name: str, prefix: tuple[str, ...] = ()) -> None:
        self.work, self.name = work, name
        self.prefix = prefix  # what runs the command (``ip netns exec NS``)
        self.process: subprocess.Popen[str] | None = None
        self.ready: dict[str, Any] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    @property
    def control(self) -> Path:
        return self.work / f"{self.name}.sock"

    @property
    def log(self) -> Path:
        return self.work / f"{self.name}.log"

    async def start(self, *args: str) -> dict[str, Any]:
        """Start the process, with ``args`` if given, else with its own files as flags."""
        env = {k: v for k, v in os.environ.items() if k != "L2S_LEDGER"}
        args = args or (
            "--keys", str(self.work / f"{self.name}.keys"),
            "--ledger", str(self.work / f"{self.name}.sqlite3"), "--quic", "127.0.0.1:0",
            "--tcp", "127.0.0.1:0", "--control", str(self.control), "--durability", "normal",
        )  # fmt: skip
        self.process = subprocess.Popen(
            [*self.prefix, *CLI, "node", *args], stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True,
            env=env,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.process.stdout.readline), WAIT_S)
        assert line, (self.work / f"{self.name}.log").read_text()
        self.ready = json.loads(line)
        assert self.ready["ready"] is True
        self._reader, self._writer = await asyncio.open_unix_connection(str(self.control))
        return self.ready

    async def ask(self, op: str, **arguments: Any) -> dict[str, Any]:
        assert self._reader is not None and self._writer is not None
        self._writer.write(json.dumps({"op": op, **arguments}).encode() + b"\n")
        await self._writer.drain()
        answer: dict[str, Any] = json.loads(await asyncio.wait_for(self._reader.readline(), 60))
        return answer

    async def do(self, op: str, **arguments: Any) -> dict[str, Any]:
        answer = await self.ask(op, **arguments)
        assert answer["ok"], (op, answer)
        return answer

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(WAIT_S)
        if self._writer is not None:
            self._writer.close()

    async def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(self.process.wait, WAIT_S)
        if self._writer is not None:
            self._writer.close()
        return code


def kill_left(*nodes: Node) -> None:
    """Kill what a failed test left running."""
    for node in nodes:
        if node.process is not None and node.process.poll() is None:
            node.process.kill()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def received(node: Node, count: int) -> list[tuple[str, bytes]]:
    out = []
    for _ in range(count):
        message = await node.do("receive", timeout=WAIT_S)
        out.append((message["session"], base64.b64decode(message["data"])))
    return out


def test_two_node_processes_keep_a_session_over_quic_through_a_sigkill(tmp_path: Path) -> None:
    async def scenario() -> None:
        alice, bob = Node(tmp_path, "alice"), Node(tmp_path, "bob")
        try:
            await bob.start()
            await alice.start()
            # No bundle handed over: Alice's node asks Bob's for it over the connection.
            dialled = await alice.do("dial", did=bob.ready["did"], quic=bob.ready["quic"],
                                     tcp=bob.ready["tcp"])  # fmt: skip
            assert dialled["transport"] == "quic"
            sid = (await alice.do("establish", did=bob.ready["did"]))["session"]
            await alice.do("wait", session=sid, state="established", timeout=WAIT_S)
            first = [b"before %d" % n for n in range(10)]
            for payload in first:
                await alice.do("send", session=sid, data=b64(payload))
            got = await received(bob, len(first))
            assert [p for _, p in got] == first
            bob_sid = got[0][0]
            await bob.do("send", session=bob_sid, data=b64(b"to alice"))
            assert [p for _, p in await received(alice, 1)] == [b"to alice"]
            (listed,) = (await alice.do("sessions"))["sessions"]
            assert listed["transport"] == "quic" and listed["state"] == "established"
            # Alice queues more and is killed with them in flight or not yet acknowledged.
            second = [b"after %d" % n for n in range(10)]
            for payload in second[:5]:
                await alice.do("send", session=sid, data=b64(payload))
            alice.kill()
            # Restarted from her key store and ledger, she finds the session and resumes it.
            await alice.start()
            (listed,) = (await alice.do("sessions"))["sessions"]
            assert listed["id"] == sid and listed["state"] == "suspended"
            await alice.do("dial", did=bob.ready["did"], quic=bob.ready["quic"])
            await alice.do("wait", session=sid, state="established", timeout=WAIT_S)
            for payload in second[5:]:
                await alice.do("send", session=sid, data=b64(payload))
            got = await received(bob, len(second))
            assert [p for _, p in got] == second  # each once, in order, across the kill
            assert {s for s, _ in got} == {bob_sid}  # the same session at Bob
            nothing = await bob.ask("receive", timeout=0.5)
            assert nothing == {"ok": False, "error": "timed out"}
            assert await alice.stop() == 0
            assert await bob.stop() == 0
        finally:
            kill_left(alice, bob)

    asyncio.run(scenario())
    for name in ("alice", "bob"):
        verified = run("verify", "--ledger", str(tmp_path / f"{name}.sqlite3"))
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_bundle_handed_out_before_a_restart_is_answered_after_it(tmp_path: Path) -> None:
    """The key store keeps a node's prekeys: restarted, it publishes the same bundle, a peer
    given the old one establishes with it, and the one-time prekey that handshake spent is
    gone from the key store."""

    async def scenario() -> None:
        alice, bob = Node(tmp_path, "alice"), Node(tmp_path, "bob")
        try:
            before = (await bob.start())["bundle"]
            assert await bob.stop() == 0
            after = await bob.start()
            assert after["bundle"] == before  # the same prekeys, signed as before
            await alice.start()
            await alice.do("peer", did=after["did"], bundle=before)
            await alice.do("dial", did=after["did"], quic=after["quic"], tcp=after["tcp"])
            sid = (await alice.do("establish", did=after["did"]))["session"]
            await alice.do("wait", session=sid, state="established", timeout=WAIT_S)
            assert await bob.stop() == 0 and await alice.stop() == 0
        finally:
            kill_left(alice, bob)

    asyncio.run(scenario())
    kept = KeyStore.load(tmp_path / "bob.keys").prekeys
    assert kept is not None and len(kept.one_time_prekeys) == ONE_TIME_PREKEYS - 1


def test_the_control_socket_answers_a_wrong_request_with_why(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = Node(tmp_path, "solo")
        try:
            await node.start()
            assert (await node.do("status"))["connections"] == []
            for request, fragment in [
                ({"op": "nonsense"}, "unknown op"),
                ({"op": "send", "session": "not-a-uuid", "data": "aGk="}, "session"),
                ({"op": "send", "session": "3" * 32, "data": "***"}, "base64"),
                ({"op": "wait", "session": "3" * 32, "state": "x", "timeout": -1}, "timeout"),
                ({"op": "dial", "did": "did:key:z6Mkx"}, "quic"),
                ({"op": "peer", "did": node.ready["did"], "bundle": "zz"}, "hex"),
                ({"op": "send", "session": "3" * 32, "data": "aGk="}, "session"),
            ]:
                answer = await node.ask(**request)
                assert answer["ok"] is False and fragment in answer["error"], (request, answer)
            assert node._writer is not None and node._reader is not None
            node._writer.write(b"{not json\n")
            await node._writer.drain()
            answer = json.loads(await node._reader.readline())
            assert answer["ok"] is False and "not JSON" in answer["error"]
            await node.do("stop")
            assert node.process is not None
            assert await asyncio.to_thread(node.process.wait, WAIT_S) == 0
            assert not node.control.exists()
        finally:
            kill_left(node)

    asyncio.run(scenario())


def test_the_node_commands_ask_a_running_node_and_say_why_when_they_cannot(
    tmp_path: Path,
) -> None:
    """``l2-session node COMMAND`` over the control socket, as a person at a shell would:
    Alice's node dials Bob's, opens a session, sends, Bob's receives; status, sessions,
    witnessed and a checkpoint, as text and JSON; close and stop. A node that is not running,
    or options that run one, refused."""

    def cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
        result = run("node", *args, "--control", str(node.control))
        assert result.returncode == 0, result.stderr
        return result

    async def scenario() -> None:
        alice, bob = Node(tmp_path, "alice"), Node(tmp_path, "bob")
        try:
            await bob.start()
            ready = await alice.start()
            answer = json.loads((await asyncio.to_thread(cli, alice, "status", "--json")).stdout)
            assert answer["did"] == ready["did"] and answer["sessions"] == 0
            shown = (await asyncio.to_thread(cli, alice, "status")).stdout
            assert f"node {ready['did']}, ledger {answer['ledger_id']}" in shown
            host, port = bob.ready["quic"]
            dialled = await asyncio.to_thread(cli, alice, "dial", bob.ready["did"],
                                              "--quic", f"{host}:{port}")  # fmt: skip
            assert dialled.stdout == "connected over quic\n"
            opened = await asyncio.to_thread(cli, alice, "establish", bob.ready["did"], "--wait")
            sid = opened.stdout.strip()
            (listed,) = json.loads((await asyncio.to_thread(cli, alice, "sessions", "--json"))
                                   .stdout)["sessions"]  # fmt: skip
            assert listed["id"] == sid and listed["state"] == "established"
            table = (await asyncio.to_thread(cli, alice, "sessions")).stdout
            assert "sessions (1)" in table and sid in table
            assert (await asyncio.to_thread(cli, alice, "send", sid, "héllo")).stdout == "saved\n"
            (tmp_path / "m.bin").write_bytes(b"\x00\x01binary")
            await asyncio.to_thread(cli, alice, "send", sid, "--file", str(tmp_path / "m.bin"))
            first = (await asyncio.to_thread(cli, bob, "receive")).stdout.split(" ", 2)
            assert first[1] == "1" and first[2] == "héllo\n"
            second = json.loads((await asyncio.to_thread(cli, bob, "receive", "--json")).stdout)
            assert base64.b64decode(second["data"]) == b"\x00\x01binary"
            assert second["session"] == first[0] and second["seq"] == 2
            # Read back from Bob's ledger: what a restart would not hand again.
            back = json.loads((await asyncio.to_thread(cli, bob, "delivered", first[0],
                                                       "--json")).stdout)  # fmt: skip
            assert [(m["seq"], base64.b64decode(m["data"])) for m in back["messages"]] == [
                (1, "héllo".encode()), (2, b"\x00\x01binary")
            ]  # fmt: skip
            after = await asyncio.to_thread(cli, bob, "delivered", first[0], "--after", "1")
            assert after.stdout.startswith(f"{first[0]} 2 ") and after.stdout.count("\n") == 1
            unknown = await asyncio.to_thread(
                run, "node", "delivered", str(uuid.uuid4()), "--control", str(bob.control)
            )
            refused(unknown, 2, "refused 'delivered'")
            witnessed = json.loads((await asyncio.to_thread(cli, bob, "witnessed", "--json"))
                                   .stdout)  # fmt: skip
            assert isinstance(witnessed["witnessed"], list)
            signed = (await asyncio.to_thread(cli, alice, "checkpoint")).stdout
            assert signed.startswith("l2-session/ledger/")
            (tmp_path / "checkpoint.txt").write_text(signed)
            assert (await asyncio.to_thread(cli, alice, "close", sid)).stdout == "closed\n"
            nothing = await asyncio.to_thread(
                run, "node", "receive", "--control", str(bob.control), "--timeout", "0.3"
            )
            refused(nothing, 2, "timed out")
            assert (await asyncio.to_thread(cli, alice, "stop")).stdout == "the node is stopping\n"
            assert alice.process is not None
            assert await asyncio.to_thread(alice.process.wait, WAIT_S) == 0
            assert await bob.stop() == 0
        finally:
            kill_left(alice, bob)
        checked = run("verify", str(tmp_path / "alice.sqlite3"), "--checkpoint",
                      str(tmp_path / "checkpoint.txt"))  # fmt: skip
        assert checked.returncode == 0, checked.stdout + checked.stderr
        control = str(alice.control)
        refused(run("node", "status", "--control", control), 2, "no control socket at", control)
        refused(run("node", "status"), 2, "--control PATH, or --config FILE")
        refused(run("node", "--keys", "k", "status"), 2, "--keys runs a node")
        refused(run("node", "dial", "did:key:z6Mkx", "--quic", "nowhere", "--control", control),
                2, "--quic 'nowhere': give HOST:PORT")  # fmt: skip

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--quic", "nowhere"), "HOST:PORT"),
        (("--tcp", "127.0.0.1:99999"), "port of 0 to 65535"),
        ((), "--quic HOST:PORT, --tcp HOST:PORT"),
    ],
)
def test_node_refuses_wrong_listen_addresses(tmp_path: Path, args: tuple[str, ...],
                                              fragment: str) -> None:  # fmt: skip
    result = run("node", "--keys", str(tmp_path / "k.keys"), "--ledger",
                 str(tmp_path / "l.sqlite3"), "--control", str(tmp_path / "c.sock"), *args)  # fmt: skip
    refused(result, 2, fragment)


def test_a_node_from_a_config_file_dials_its_address_book_and_logs_json(tmp_path: Path) -> None:
    """Alice's node takes its settings from a TOML file, with Bob in its [peers]: ``establish``
    alone dials him (QUIC first) and fetches his bundle; its logs are JSON lines."""

    async def scenario() -> None:
        alice, bob = Node(tmp_path, "alice"), Node(tmp_path, "bob")
        try:
            await bob.start()
            host, port = bob.ready["quic"]
            config = tmp_path / "alice.toml"
            config.write_text(
                f'keys = "{tmp_path / "alice.keys"}"\n'
                f'ledger = "{tmp_path / "alice.sqlite3"}"\n'
                f'control = "{alice.control}"\n'
                'quic = "127.0.0.1:0"\n'
                'durability = "normal"\n'
                'log_format = "json"\n'
                "witness_interval_s = 0.3\n"
                f'[peers]\n"{bob.ready["did"]}" = {{ quic = "{host}:{port}" }}\n'
            )
            await alice.start("--config", str(config))
            sid = (await alice.do("establish", did=bob.ready["did"]))["session"]
            await alice.do("wait", session=sid, state="established", timeout=WAIT_S)
            await alice.do("send", session=sid, data=b64(b"from the book"))
            assert [p for _, p in await received(bob, 1)] == [b"from the book"]
            (listed,) = (await alice.do("sessions"))["sessions"]
            assert listed["transport"] == "quic"
            # The two nodes witness each other's ledgers over the session (decision 25).
            async with asyncio.timeout(WAIT_S):
                while (await alice.do("status"))["witnessing"].get("cosigned", 0) < 1:
                    await asyncio.sleep(0.05)
            assert (await bob.do("status"))["witnessing"].get("witnessed", 0) >= 1
            (seen,) = (await bob.do("witnessed"))["witnessed"]
            assert seen["signer"] == alice.ready["did"] and seen["conflicts"] == 0
            assert seen["origin"].startswith("l2-session/ledger/") and seen["size"] >= 1
            signed = (await alice.do("checkpoint"))["checkpoint"]
            assert (
                signed.startswith(seen["origin"] + "\n")
                and f"\u2014 {alice.ready['did']} " in signed
            )
            unknown = await alice.ask("dial", did="did:key:z6MkStranger")
            assert unknown["ok"] is False and "address book" in unknown["error"]
            assert await alice.stop() == 0
            assert await bob.stop() == 0
            logs = [json.loads(line) for line in alice.log.read_text().splitlines() if line]
            assert logs and all({"time", "level", "logger", "message"} <= set(x) for x in logs)
        finally:
            kill_left(alice, bob)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("keys = [", "is not TOML"),
        ('keyz = "k"', "unknown setting keyz"),
        (
            'keys = "k"\nledger = "l"\ncontrol = "c"\nquic = "127.0.0.1:0"\ndurability = "fast"',
            "durability 'fast'",
        ),
        ('keys = "k"\nledger = "l"\ncontrol = "c"\nquic = "127.0.0.1:0"\n[peers]\nx = 1', "peer x"),
        ('keys = "k"\nquic = "127.0.0.1:0"', "give --ledger, --control"),
        (
            'keys = "k"\nledger = "l"\ncontrol = "c"\nquic = "127.0.0.1:0"\nwitness_interval_s = 0',
            "witness_interval_s must be seconds above 0",
        ),
        (
            'keys = "k"\nledger = "l"\ncontrol = "c"\nquic = "127.0.0.1:0"\nquic_retry_s = "soon"',
            "quic_retry_s must be seconds above 0, got 'soon'",
        ),
        (
            'keys = "k"\nledger = "l"\ncontrol = "c"\nquic = "127.0.0.1:0"\n[session]\nheartbeat = 1',
            "[session]: unknown field heartbeat",
        ),
        (
            'keys = "k"\nledger = "l"\ncontrol = "c"\nquic = "127.0.0.1:0"\n[session]\nttl = -1',
            "[session]: SessionConfig.ttl = -1",
        ),
    ],
)
def test_node_refuses_a_wrong_config_file_with_why(
    tmp_path: Path, content: str, fragment: str
) -> None:
    config = tmp_path / "node.toml"
    config.write_text(content)
    env_free = run("node", "--config", str(config))
    refused(env_free, 2, fragment)


def test_node_refuses_a_wrong_peer_flag(tmp_path: Path) -> None:
    result = run("node", "--keys", "k", "--ledger", "l", "--control", "c", "--quic", "127.0.0.1:0",
                 "--peer", "did:key:z6Mkx=udp:1.2.3.4:5")  # fmt: skip
    refused(result, 2, "DID=quic:HOST:PORT,tcp:HOST:PORT")


def test_two_node_processes_keep_a_session_through_loss_and_a_nat_rebinding(
    tmp_path: Path,
) -> None:
    """The two processes over QUIC through a UDP relay in the test's process that loses 10 %
    of the datagrams each way and rebinds its port mid-stream (the connection migrates):
    every message once, in order, the session and its keys unchanged; both ledgers verify."""

    async def scenario() -> None:
        alice, bob = Node(tmp_path, "alice"), Node(tmp_path, "bob")
        relay = None
        try:
            await bob.start()
            await alice.start()
            relay = await ChaosRelay.start(tuple(bob.ready["quic"]), loss=0.1, seed=3)
            dialled = await alice.do("dial", did=bob.ready["did"], quic=list(relay.address))
            assert dialled["transport"] == "quic"
            sid = (await alice.do("establish", did=bob.ready["did"]))["session"]
            await alice.do("wait", session=sid, state="established", timeout=WAIT_S)
            sent = [b"m%d" % n for n in range(40)]
            for payload in sent[:20]:
                await alice.do("send", session=sid, data=b64(payload))
            await relay.rebind()
            for payload in sent[20:]:
                await alice.do("send", session=sid, data=b64(payload))
            got = await received(bob, len(sent))
            assert [p for _, p in got] == sent
            nothing = await bob.ask("receive", timeout=0.5)
            assert nothing == {"ok": False, "error": "timed out"}
            (listed,) = (await alice.do("sessions"))["sessions"]
            assert listed["state"] == "established" and listed["transport"] == "quic"
            assert relay.lost > 0
            assert await alice.stop() == 0
            assert await bob.stop() == 0
        finally:
            if relay is not None:
                relay.close()
            kill_left(alice, bob)

    asyncio.run(scenario())
    for name in ("alice", "bob"):
        verified = run("verify", "--ledger", str(tmp_path / f"{name}.sqlite3"))
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_two_node_processes_move_a_session_from_a_dead_quic_path_to_utcp(
    tmp_path: Path,
) -> None:
    """Alice's node (QUIC timers shortened in its config: keep-alive 0.5 s, idle 2 s) talks to
    Bob over QUIC through a relay, with Bob's μTCP address in its address book. The relay
    stops passing anything: the QUIC path dies by its idle timeout, Alice's node records the
    fallback, dials Bob again over μTCP, and the session carries on there — same session,
    every message once and in order, both ledgers verifying, the switch in their history."""

    async def scenario() -> None:
        alice, bob = Node(tmp_path, "alice"), Node(tmp_path, "bob")
        relay = None
        try:
            await bob.start()
            relay = await ChaosRelay.start(tuple(bob.ready["quic"]), loss=0.0, seed=1)
            (rhost, rport), (thost, tport) = relay.address, bob.ready["tcp"]
            config = tmp_path / "alice.toml"
            config.write_text(
                f'keys = "{tmp_path / "alice.keys"}"\n'
                f'ledger = "{tmp_path / "alice.sqlite3"}"\n'
                f'control = "{alice.control}"\n'
                'quic = "127.0.0.1:0"\ndurability = "normal"\n'
                "quic_keepalive_s = 0.5\nquic_idle_timeout_s = 2.0\n"
                f'[peers]\n"{bob.ready["did"]}" = '
                f'{{ quic = "{rhost}:{rport}", tcp = "{thost}:{tport}" }}\n'
            )
            await alice.start("--config", str(config))
            sid = (await alice.do("establish", did=bob.ready["did"]))["session"]
            await alice.do("wait", session=sid, state="established", timeout=WAIT_S)
            (listed,) = (await alice.do("sessions"))["sessions"]
            assert listed["transport"] == "quic"
            sent = [b"m%d" % n for n in range(20)]
            for payload in sent[:10]:
                await alice.do("send", session=sid, data=b64(payload))
            assert [p for _, p in await received(bob, 10)] == sent[:10]
            relay.partitioned = True  # the QUIC path is dead from here on
            for payload in sent[10:]:
                await alice.do("send", session=sid, data=b64(payload))
            got = await received(bob, 10)  # after the idle timeout, over μTCP
            assert [p for _, p in got] == sent[10:]
            nothing = await bob.ask("receive", timeout=0.5)
            assert nothing == {"ok": False, "error": "timed out"}
            (listed,) = (await alice.do("sessions"))["sessions"]
            assert listed["transport"] == "utcp" and listed["state"] == "established"
            assert "utcp" in (await alice.do("status"))["connections"]
            assert await alice.stop() == 0
            assert await bob.stop() == 0
        finally:
            if relay is not None:
                relay.close()
            kill_left(alice, bob)

    asyncio.run(scenario())
    for name in ("alice", "bob"):
        ledger = tmp_path / f"{name}.sqlite3"
        verified = run("verify", "--ledger", str(ledger))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        with sqlite3.connect(ledger) as db:
            topics = [t for (t,) in db.execute("SELECT topic FROM ledger_events ORDER BY position")]
        kinds = [t.rsplit(".", 1)[-1] for t in topics]
        assert kinds.index("FallbackAttempted") < kinds.index("TransportSwitched"), name


def test_a_node_makes_fresh_prekeys_when_none_are_kept_or_half_their_month_has_passed(
    tmp_path: Path,
) -> None:
    store = KeyStore.create(tmp_path / "node.keys")
    now = 1_767_225_600_000_000
    first, bundle = node_prekeys(store, now)
    stored = KeyStore.load(store.path).prekeys  # kept before it is published
    assert stored is not None and stored.signed_prekey_id == first.signed_prekey_id
    _, same = node_prekeys(KeyStore.load(store.path), now + PREKEYS_VALID_US // 2 - 1)
    assert same.encode() == bundle.encode()
    fresh, other = node_prekeys(KeyStore.load(store.path), now + PREKEYS_VALID_US // 2 + 1)
    assert fresh.signed_prekey_id != first.signed_prekey_id and other.encode() != bundle.encode()
    stored = KeyStore.load(store.path).prekeys
    assert stored is not None and stored.signed_prekey_id == fresh.signed_prekey_id


def test_a_restarted_node_whose_resumption_is_refused_gets_the_bundle_on_dial(
    tmp_path: Path,
) -> None:
    """Alice is killed; Bob comes back over a new ledger, so he knows nothing of the session
    and refuses its resumption. The session falls back to a full handshake (decision 16),
    which needs Bob's prekey bundle: the restarted Alice's ``dial`` asks Bob for it, and the
    session is established again — same session at Alice, new keys — without an ``establish``."""

    async def scenario() -> None:
        alice, bob = Node(tmp_path, "alice"), Node(tmp_path, "bob")
        try:
            await bob.start()
            await alice.start()
            await alice.do("dial", did=bob.ready["did"], tcp=bob.ready["tcp"])
            sid = (await alice.do("establish", did=bob.ready["did"]))["session"]
            await alice.do("wait", session=sid, state="established", timeout=WAIT_S)
            alice.kill()
            assert await bob.stop() == 0
            await bob.start(
                "--keys", str(tmp_path / "bob.keys"), "--ledger", str(tmp_path / "bob-new.sqlite3"),
                "--tcp", "127.0.0.1:0", "--control", str(bob.control), "--durability", "normal",
            )  # fmt: skip
            await alice.start()
            await alice.do("dial", did=bob.ready["did"], tcp=bob.ready["tcp"])
            await alice.do("wait", session=sid, state="established", timeout=WAIT_S)
            await alice.do("send", session=sid, data=b64(b"after a full handshake"))
            assert [p for _, p in await received(bob, 1)] == [b"after a full handshake"]
            assert await alice.stop() == 0
            assert await bob.stop() == 0
        finally:
            kill_left(alice, bob)

    asyncio.run(scenario())
