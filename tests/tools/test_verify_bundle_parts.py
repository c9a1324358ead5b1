"""The standalone verifier's own pieces, against plain recomputations: where each part of a
file begins, inclusion proofs checked in position order with the nodes of the proof before
reused — every hash of every proof altered in turn is still caught — and a whole export's
tree recomputed by parts."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import threading
from pathlib import Path

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st
from l2_session.infrastructure.ledger.merkle import audit_path, leaf_hash, levels, root
from l2_session.tools import verify_bundle as vb


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=9).map(lambda b: b.replace(b"\n", b"x")), max_size=40),
    last_newline=st.booleans(),
    every=st.integers(1, 7),
    block_size=st.integers(1, 30),
)
def test_line_starts_are_those_of_a_plain_split(tmp_path_factory, lines, last_newline, every,
                                                 block_size):  # fmt: skip
    data = b"\n".join(lines) + (b"\n" if last_newline and lines else b"")
    path = tmp_path_factory.mktemp("lines") / "f"
    path.write_bytes(data)
    kept = io.BytesIO(data).readlines()  # split at b"\n" only
    offsets = [sum(len(x) for x in kept[:i]) for i in range(len(kept))]
    assert vb._line_starts(path, every, block_size) == [*offsets[::every], len(kept)]


def test_a_line_over_the_limit_is_refused_by_name(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(vb, "MAX_LINE", 10)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"a":1}\n{"a":"0123456789"}\n')
    with path.open("rb") as f:
        assert vb._line(f, "events.jsonl") == {"a": 1}
        with pytest.raises(vb.Unreadable, match="events.jsonl holds a line over 10 bytes"):
            vb._line(f, "events.jsonl")


@pytest.mark.parametrize("line", [b' {"a": 1} \n', b'{"a":1}'])
def test_a_json_line_reads_with_or_without_surrounding_space(tmp_path, line) -> None:
    path = tmp_path / "f"
    path.write_bytes(line)
    with path.open("rb") as f:
        assert vb._line(f, "f") == {"a": 1}


@pytest.mark.parametrize("line", [b'{"a":1} x\n', b"{\n", b'{"a":"\xff"}\n'])
def test_a_line_that_is_not_one_json_value_is_refused(tmp_path, line) -> None:
    path = tmp_path / "f"
    path.write_bytes(line)
    with path.open("rb") as f, pytest.raises(vb.Unreadable, match="f holds a line that is not"):
        vb._line(f, "f")


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 21, 33])
def test_proofs_in_order_with_a_path_each_give_the_root_and_any_altered_hash_is_caught(size):
    events = [os.urandom(32) for _ in range(size)]
    tree = levels([leaf_hash(e) for e in events])
    root = tree[-1][0]
    proofs = [[base64.b64encode(h).decode() for h in audit_path(tree, i)] for i in range(size)]
    path: dict = {}
    assert [vb.root_from_inclusion(i, size, e, p, path) for i, (e, p) in
            enumerate(zip(events, proofs, strict=True))] == [root] * size  # fmt: skip
    other = base64.b64encode(os.urandom(32)).decode()
    for k in range(size):
        for j in range(len(proofs[k])):
            altered = [list(p) for p in proofs]
            altered[k][j] = other
            path = {}
            roots = [vb.root_from_inclusion(i, size, e, p, path)
                     for i, (e, p) in enumerate(zip(events, altered, strict=True))]  # fmt: skip
            assert [i for i, r in enumerate(roots) if r != root] == [k], (k, j)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(1, 300),
    cuts=st.lists(st.integers(1, 299), max_size=6),
    drop=st.none() | st.integers(0, 299),
)
def test_a_whole_export_s_tree_joined_from_parts_is_the_tree_of_its_events(size, cuts, drop):
    """A whole export's root, recomputed by parts cut anywhere and joined in order, is RFC
    9162's root of its events; with any event missing there is no root (and the gap is
    reported)."""
    genesis = bytes(32)
    hashes = [blake3(b"%d" % i).digest() for i in range(size)]
    records = [(i + 1, f"s{i}", 1, 0, "selected", genesis, hashes[i - 1] if i else genesis,
                hashes[i], False) for i in range(size)]  # fmt: skip
    if drop is not None and drop < size:
        del records[drop]
    bounds = sorted({0, len(records), *(c for c in cuts if c < len(records))})
    joined, problems = vb.Spans(True, None, None, genesis), []
    for a, b in itertools.pairwise(bounds):
        part = vb.Spans(True, None, None, genesis)
        for record in records[a:b]:
            part.add(record)
        joined.join(part)
        problems += part.problems
    problems += joined.problems
    if len(records) == size:
        assert joined.root(size) == root([leaf_hash(h) for h in hashes])
        assert not problems
    else:
        assert joined.root(size) is None
        assert problems or drop == size - 1  # the last one: the export ends early


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.integers(0, 10**12), max_size=30),
    last_newline=st.booleans(),
    cuts=st.lists(st.integers(0, 500), max_size=8),
)
def test_parts_cut_by_bytes_read_each_line_once(tmp_path_factory, values, last_newline, cuts):
    """A bundle without proofs is cut at byte offsets anywhere, even inside a line: each part
    reads the lines that start in it, so the parts read every line once, in order."""
    data = b"\n".join(b'{"i": %d}' % v for v in values) + (
        b"\n" if last_newline and values else b""
    )
    path = tmp_path_factory.mktemp("parts") / "events.jsonl"
    path.write_bytes(data)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    read = []
    with path.open("rb") as f:
        for a, b in itertools.pairwise(bounds):
            read += [value["i"] for value in vb._part_lines(f, a, b, -1)]
    assert read == values


def test_an_unreadable_bundle_stops_the_file_hashing_beside_its_checks(tmp_path, monkeypatch):
    """The manifest's file hashes are computed on a thread beside the checks; when a check
    finds the bundle unreadable, that thread is told to stop rather than waited for."""
    told: list[bool] = []

    def digest(path: Path, stop) -> tuple[str, int]:
        told.append(stop.wait(30))  # a hash that would take long: returns once told to stop
        return "", 0

    def unreadable(*_args) -> None:
        raise vb.Unreadable("events.jsonl holds a line that is not one JSON value")

    monkeypatch.setattr(vb, "file_digest", digest)
    monkeypatch.setattr(vb, "_contents", unreadable)
    for name in vb.FILES:
        (tmp_path / name).write_bytes(b"x")
    manifest = {
        "format": "l2-session-bundle", "version": 2, "selection": {"partial": False},
        "files": {name: {"blake3": "", "bytes": 1} for name in vb.FILES},
    }  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(vb.Unreadable, match="not one JSON value"):
        vb.verify_bundle(tmp_path)
    assert told == [True]  # the one hash under way was told; the others never started


def test_a_file_digest_told_to_stop_reads_no_further(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(os.urandom(3 << 20))
    assert vb.file_digest(path) == (blake3(path.read_bytes()).hexdigest(), 3 << 20)
    stop = threading.Event()
    stop.set()
    assert vb.file_digest(path, stop)[1] == 0
