"""The ledger's canonical JSON transcoder: eventsourcing's own transcoder test case, and the
decoding shortcut (payloads that cannot hold a ``"_type_"`` object are read without the
per-object hook) against the hooked decoding on what could fool it.

Six of eventsourcing's transcoder tests are written for transcoders that keep tuples and
subclasses of dict, list, str and int; eventsourcing's own ``JSONTranscoder`` — the stdlib
``json`` one this transcoder extends — writes them as their base types and fails them the same
way. Those six are replaced here by a test of what the ledger does instead (the base types
come back). One more expects ``"_type_"`` written before ``"_data_"``: canonical JSON sorts
keys, so it runs here with the sorted bytes. The rest run unchanged."""

from __future__ import annotations

import json
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import JSONTranscoder, Transcoder
from eventsourcing.tests import persistence as contract
from l2_session.infrastructure.ledger.codec import CanonicalJSONTranscoder

AS_BASE_TYPES = ("dict_subclass", "int_subclass", "list_subclass", "str_subclass", "tuple",
                 "mixed")  # fmt: skip


class TestCanonicalJSONTranscoder(contract.TranscoderTestCase):
    def construct_transcoder(self) -> Transcoder:
        transcoder = CanonicalJSONTranscoder()
        transcoder.register(contract.CustomType1AsDict())
        transcoder.register(contract.CustomType2AsDict())
        return transcoder

    def test_nested_custom_type(self) -> None:  # the same, keys sorted
        obj = contract.CustomType2(contract.CustomType1(UUID("b2723fe2c01a40d2875ea3aac6a09ff5")))
        data = self.transcoder.encode(obj)
        assert data == (
            b'{"_data_":{"_data_":{"_data_":"b2723fe2c01a40d2875ea3aac6a09ff5",'
            b'"_type_":"uuid_hex"},"_type_":"custom_type1_as_dict"},'
            b'"_type_":"custom_type2_as_dict"}'
        )
        copy = self.transcoder.decode(data)
        assert isinstance(copy, contract.CustomType2)
        assert isinstance(copy.value, contract.CustomType1)
        assert copy.value.value == obj.value.value


for _name in AS_BASE_TYPES:
    setattr(TestCanonicalJSONTranscoder, f"test_{_name}", None)  # replaced: see the docstring


def test_tuples_and_subclasses_come_back_as_their_base_types() -> None:
    transcoder = CanonicalJSONTranscoder()
    value = [(1, "a"), contract.Mydict({"b": contract.MyInt(2)}), contract.MyStr("c"),
             contract.MyList([((),)])]  # fmt: skip
    data = transcoder.encode(value)
    assert data == b'[[1,"a"],{"b":2},"c",[[[]]]]'
    assert transcoder.decode(data) == [[1, "a"], {"b": 2}, "c", [[[]]]]


def hooked(data: bytes) -> object:
    """What the decoding is without the shortcut: JSONTranscoder's own."""
    return JSONTranscoder.decode(CanonicalJSONTranscoder(), data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"b":[1,2,{"c":null}]}',
        b'{"id":{"_data_":"' + uuid4().hex.encode() + b'","_type_":"uuid_hex"}}',
        b'{"id":{"_data_":"' + uuid4().hex.encode() + b'","\\u005ftype_":"uuid_hex"}}',
        b'{"text":"a \\u00e9 \\u0001 _type_"}',
        b'{"text":"\\"_type_\\""}',
        b'"plain"',
    ],
)
def test_the_shortcut_decodes_as_the_hook_does(data: bytes) -> None:
    assert CanonicalJSONTranscoder().decode(data) == hooked(data)


def test_an_escaped_type_key_is_still_transcoded() -> None:
    uid = uuid4()
    data = json.dumps({"id": {"\\u005ftype_": "x"}}).encode()  # escaped twice: not a key
    assert CanonicalJSONTranscoder().decode(data) == {"id": {"\\u005ftype_": "x"}}
    data = b'{"id":{"_data_":"' + uid.hex.encode() + b'","\\u005ftype_":"uuid_hex"}}'
    assert CanonicalJSONTranscoder().decode(data) == {"id": UUID(uid.hex)}
