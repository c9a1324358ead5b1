"""A real partition: two ``l2-session node`` processes in two network namespaces joined by a
veth pair, a session over QUIC between them, the link taken down (nothing passes, in the
kernel) while messages are sent, and brought up again — every message arrives once and in
order, on the same session and keys. Needs ``ip netns`` (root, or CAP_NET_ADMIN); skipped
with the reason where it is not allowed. Only addresses inside the namespaces the test made
are used (10.231.0.0/30), and the namespaces (with their links) are removed afterwards."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cli_node import WAIT_S, Node, kill_left, received

A, B = f"l2s-a-{os.getpid()}", f"l2s-b-{os.getpid()}"
A_IP, B_IP = "10.231.0.1", "10.231.0.2"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespaces() -> Iterator[None]:
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2): the network-namespace test needs it")
    try:
        ip("netns", "add", A)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"`ip netns add` is not allowed here ({error.stderr.strip()}): needs root")
    try:
        ip("netns", "add", B)
        ip("link", "add", "l2s-va", "netns", A, "type", "veth", "peer", "l2s-vb", "netns", B)
        for ns, dev, address in ((A, "l2s-va", A_IP), (B, "l2s-vb", B_IP)):
            ip("-n", ns, "addr", "add", f"{address}/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in (A, B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_session_over_quic_lives_through_a_real_partition(
    tmp_path: Path, namespaces: None
) -> None:
    async def scenario() -> None:
        alice = Node(tmp_path, "alice", ("ip", "netns", "exec", A))
        bob = Node(tmp_path, "bob", ("ip", "netns", "exec", B))
        common = ("--durability", "normal")
        try:
            await bob.start("--keys", str(tmp_path / "bob.keys"), "--ledger",
                            str(tmp_path / "bob.sqlite3"), "--quic", f"{B_IP}:0",
                            "--control", str(bob.control), *common)  # fmt: skip
            await alice.start("--keys", str(tmp_path / "alice.keys"), "--ledger",
                              str(tmp_path / "alice.sqlite3"), "--quic", f"{A_IP}:0",
                              "--control", str(alice.control), *common)  # fmt: skip
            dialled = await alice.do("dial", did=bob.ready["did"], quic=bob.ready["quic"])
            assert dialled["transport"] == "quic"
            sid = (await alice.do("establish", did=bob.ready["did"]))["session"]
            await alice.do("wait", session=sid, state="established", timeout=WAIT_S)
            sent = [b"m%d" % n for n in range(30)]
            for payload in sent[:10]:
                await alice.do("send", session=sid, data=b64(payload))
            assert [p for _, p in await received(bob, 10)] == sent[:10]
            ip("-n", A, "link", "set", "l2s-va", "down")  # the partition
            try:
                for payload in sent[10:20]:
                    await alice.do("send", session=sid, data=b64(payload))
                await asyncio.sleep(3.0)
                nothing = await bob.ask("receive", timeout=0.2)
                assert nothing == {"ok": False, "error": "timed out"}  # nothing got through
            finally:
                ip("-n", A, "link", "set", "l2s-va", "up")
            for payload in sent[20:]:
                await alice.do("send", session=sid, data=b64(payload))
            got = await received(bob, 20)
            assert [p for _, p in got] == sent[10:]  # once each, in order
            (listed,) = (await alice.do("sessions"))["sessions"]
            assert listed["state"] == "established" and listed["transport"] == "quic"
            assert await alice.stop() == 0
            assert await bob.stop() == 0
        finally:
            kill_left(alice, bob)

    asyncio.run(scenario())
