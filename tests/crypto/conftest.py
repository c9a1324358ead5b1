"""Shared fixtures for the crypto tests: the published vectors and a tally of what each run checked.

The vectors live outside the repository, in ``../shared/vectors`` next to the checkout
(see that folder's README for provenance). They are read in place, never copied or edited.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crypto_support import DAY_US, NOW_US
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from l2_session.domain.handshake.bundle import create_prekeys
from l2_session.domain.handshake.kem import backend
from l2_session.domain.handshake.protocol import Responder

# tests/crypto/conftest.py -> parents[2] is the repository root.
REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_VECTORS = (REPO_ROOT / ".." / "shared" / "vectors").resolve()

# (file, library) -> {"expressed": n, "skipped": n, ...}; printed at the end of the run so that
# a reader of the test log sees how much of each vector file a library could be held to.
TALLY: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))


def _in_ci() -> bool:
    # .ci/run exports L2S_REQUIRE_POSTGRES=1; generic CI systems export CI=true.
    return bool(os.environ.get("CI")) or os.environ.get("L2S_REQUIRE_POSTGRES") == "1"


@pytest.fixture(scope="session")
def shared_vectors() -> Path:
    if not SHARED_VECTORS.is_dir():
        message = (
            f"published test vectors not found at {SHARED_VECTORS} "
            "(expected ../shared/vectors beside the repository)"
        )
        if _in_ci():
            pytest.fail(message + "; CI must run them")
        pytest.skip(message)
    return SHARED_VECTORS


@pytest.fixture(scope="session")
def wycheproof(shared_vectors: Path) -> Callable[[str], dict[str, Any]]:
    def load(name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((shared_vectors / "wycheproof" / name).read_text())
        return data

    return load


@pytest.fixture
def tally() -> Callable[[str, str, str], None]:
    def count(file: str, library: str, outcome: str) -> None:
        TALLY[(file, library)][outcome] += 1

    return count


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    terminalreporter.section("published vectors: entries expressed / skipped per library")
    for (file, library), counts in sorted(TALLY.items()):
        detail = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        terminalreporter.write_line(f"{file:45s} {library:13s} {detail}")


# --- two parties with real keys ---------------------------------------------------------------


@pytest.fixture
def parties() -> Callable[..., Any]:
    """Build an initiator identity and a responder (identity, prekeys, bundle, Responder)."""

    def make(kem: str = "pqcrypto", one_time_prekeys: int = 2) -> Any:
        initiator = Ed25519PrivateKey.generate()
        responder_identity = Ed25519PrivateKey.generate()
        secrets, bundle = create_prekeys(
            responder_identity,
            expires_at_us=NOW_US + 7 * DAY_US,
            one_time_prekey_ids=tuple(range(1, one_time_prekeys + 1)),
            kem=backend(kem),
        )
        responder = Responder(responder_identity, secrets, bundle)
        return initiator, responder_identity, bundle, responder

    return make
