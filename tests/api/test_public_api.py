"""The public API is what ``l2_session`` exports, each name documented, and its calls'
signatures pinned here: a change to them is deliberate (edit this file with it)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import l2_session
from l2_session import Node, Session

PUBLIC = [
    "CLOSED", "Addresses", "AuthenticationFailed", "CloseReason", "ConfigError",
    "FailureReason", "InvalidState", "KeyRotationFailed", "KeyStore", "KeyStoreError",
    "Message", "MessageTooLarge", "Node", "NodeClosed", "NothingToResume", "PeerQuarantined",
    "Session", "SessionClosed", "SessionConfig", "SessionError", "SessionLedger", "State",
    "StateChange", "Timeout", "TransportFailed", "UnknownSession", "verify",
]  # fmt: skip

SIGNATURES = {
    "Node.open": "(cls, *, identity: str | os.PathLike[str] | KeyStore, ledger: str | os.PathLike[str], listen: str | Addresses | None = None, config: SessionConfig | None = None, durability: Literal[full, normal] = full, quic_settings: QuicSettings | None = None) -> _Opening",
    "Node.establish": "(self, peer_did: str, *, addresses: Addresses | str | Mapping[str, Any] | None = None, bundle: bytes | None = None, timeout: float = 10.0) -> Session",
    "Node.accept": "(self, timeout: float | None = None) -> Session",
    "Node.resume": "(self, peer_did: str, *, addresses: Addresses | str | Mapping[str, Any] | None = None, timeout: float = 10.0) -> Session",
    "Node.connect": "(self, peer_did: str, *, addresses: Addresses | str | Mapping[str, Any] | None = None, timeout: float = 10.0) -> None",
    "Node.delivered": "(self, session_id: UUID, *, after: int = 0, limit: int = 1000) -> list[Message]",
    "Node.sessions": "(self) -> list[Session]",
    "Node.session": "(self, session_id: UUID) -> Session",
    "Node.state_changes": "(self) -> AsyncIterator[StateChange]",
    "Node.close": "(self, *, end_sessions: bool = False) -> None",
    "Session.send": "(self, data: bytes) -> None",
    "Session.receive": "(self, timeout: float | None = None) -> Message",
    "Session.delivered": "(self, after: int = 0, limit: int = 1000) -> list[Message]",
    "Session.__aiter__": "(self) -> AsyncIterator[Message]",
    "Session.wait": "(self, state: str, timeout: float = 10.0) -> None",
    "Session.close": "(self, timeout: float = 5.0) -> None",
}  # fmt: skip

PROPERTIES = {
    "Node": {"did", "transport"},
    "Session": {"state", "closed", "transport"},
}


def test_the_top_level_exports_the_public_names_and_nothing_else():
    assert sorted(l2_session.__all__) == sorted(PUBLIC)
    visible = {n for n in dir(l2_session) if not n.startswith("_")}
    # Besides the names: the layers, as sub-packages (and the front door's own module).
    assert visible - set(PUBLIC) <= {
        "domain", "infrastructure", "projections", "transports", "tools", "node",
    }  # fmt: skip
    for name in PUBLIC:
        value = getattr(l2_session, name)
        if name != "CLOSED":
            assert inspect.getdoc(value), f"{name} has no docstring"


def test_the_calls_of_node_and_session_keep_their_signatures_and_docstrings():
    for qualified, expected in SIGNATURES.items():
        owner, name = qualified.split(".")
        member = inspect.getattr_static({"Node": Node, "Session": Session}[owner], name)
        function = member.__func__ if isinstance(member, classmethod) else member
        assert str(inspect.signature(function)).replace("'", "").replace('"', "") == expected, (
            qualified
        )
        assert inspect.getdoc(function), f"{qualified} has no docstring"
    for owner, names in PROPERTIES.items():
        cls = {"Node": Node, "Session": Session}[owner]
        for name in names:
            member = inspect.getattr_static(cls, name)
            assert isinstance(member, property) and member.__doc__, f"{owner}.{name}"
    public = {
        f"{cls.__name__}.{name}"
        for cls in (Node, Session)
        for name in vars(cls)
        if not name.startswith("_") or name == "__aiter__"
    }
    pinned = set(SIGNATURES) | {f"{o}.{n}" for o, ns in PROPERTIES.items() for n in ns}
    assert public == pinned


def test_importing_a_layer_does_not_load_the_front_door():
    """``import l2_session.domain…`` stays as light as that layer: the public names load
    on first use (the transports pull in aioquic and TLS)."""
    code = (
        "import sys, l2_session.domain.session.states\n"
        "assert 'aioquic' not in sys.modules and 'l2_session.node' not in sys.modules\n"
        "from l2_session import Node\n"
        "assert 'l2_session.node' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
