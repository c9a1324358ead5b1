"""docs/handshake.md is enough to implement the handshake: a second implementation, written from
the document with the raw primitives, reproduces every value of its worked example from the
documented private inputs; and the project's code, fed the same inputs, sends the same bytes.

The document's values sit in blocks this test reads::

    <!-- values:NAME -->
    ```
    name   value            (hex, a decimal integer, a did:key, or a "quoted string" with \\0)
           continued value  (a line starting with a space continues the value above)
    ```

plus the messages of the rendered worked example (``<!-- worked-example:begin -->``). Every
documented value must be one this test computes, and every value it computes must be
documented. Context strings and signature labels are taken from the document, not from the
code, so a wrong string in the document breaks the computed messages; they are then compared
with the code's constants too.

After a deliberate change of the protocol (and of the formulas below, which follow the
document): ``L2S_REGENERATE_VECTORS=1 pytest tests/crypto/test_handshake_doc.py`` rewrites the
derived values in the blocks (never the inputs, contexts or labels).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import blake3
import mlkem768_reference as mlkem
import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem as library_mlkem
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from handshake_vector import VECTOR_FILE, build, doc_example

DOC = Path(__file__).resolve().parents[2] / "docs" / "handshake.md"
BLOCK = re.compile(r"<!-- values:([\w-]+) -->\n```\n(.*?)\n```", re.DOTALL)
MESSAGE = re.compile(r"\*\*(\w+)\*\* \((\d+) bytes\)\n\n```\n(.*?)\n```", re.DOTALL)
REGENERATE = os.environ.get("L2S_REGENERATE_VECTORS") == "1"

# Values that are inputs or definitions: compared, never regenerated.
GIVEN_BLOCKS = ("contexts", "inputs")
MESSAGES = (
    "bundle",
    "init",
    "response",
    "confirm",
    "first_data_record",
    "resume",
    "resume_response",
    "resume_confirm",
    "first_heartbeat_record",
)


# --- reading the document ----------------------------------------------------------------------


def value_blocks(text: str) -> dict[str, dict[str, str]]:
    """{block name: {value name: value as written}}."""
    blocks: dict[str, dict[str, str]] = {}
    for match in BLOCK.finditer(text):
        values: dict[str, str] = {}
        name = ""
        for line in match.group(2).splitlines():
            if line.startswith(" "):
                values[name] += line.strip()
                continue
            name, _, value = line.partition(" ")
            assert name not in values, f"{name} twice in block {match.group(1)}"
            values[name] = value.strip()
        assert match.group(1) not in blocks, f"block {match.group(1)} twice"
        blocks[match.group(1)] = values
    return blocks


def messages(text: str) -> dict[str, str]:
    """The worked example's messages: the last column of each line is the hex of a field."""
    out = {}
    for name, length, body in MESSAGE.findall(doc_example(text)):
        out[name] = "".join(line.split()[-1] for line in body.splitlines())
        assert len(out[name]) == 2 * int(length), f"{name}: not {length} bytes"
    return out


def documented(text: str) -> dict[str, str]:
    flat: dict[str, str] = {}
    for block in value_blocks(text).values():
        for name, value in block.items():
            assert name not in flat, f"{name} documented twice"
            flat[name] = value
    for name, value in messages(text).items():
        assert name not in flat, f"{name} documented twice"
        flat[name] = value
    return flat


def string(value: str) -> bytes:
    """A "quoted" context or label: ASCII, \\0 for the zero byte."""
    assert value.startswith('"') and value.endswith('"'), value
    return value[1:-1].replace("\\0", "\0").encode("ascii")


# --- the document's definitions, implemented again from the text ---------------------------------

P = 2**255 - 19
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def u8(n: int) -> bytes:
    return struct.pack(">B", n)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def parts(*xs: bytes) -> bytes:
    """What H, KDF and MAC consume: each part as u32 big-endian length || bytes."""
    return b"".join(u32(len(x)) + x for x in xs)


class Schedule:
    """H, KDF and MAC as the document defines them, with the document's context strings."""

    def __init__(self, contexts: dict[str, str]) -> None:
        self.ctx = {name: string(value).decode() for name, value in contexts.items()}

    def h(self, *xs: bytes) -> bytes:
        context = self.ctx["context_transcript"]
        return blake3.blake3(parts(*xs), derive_key_context=context).digest()

    def kdf(self, name: str, *xs: bytes, length: int = 32) -> bytes:
        return blake3.blake3(parts(*xs), derive_key_context=self.ctx[name]).digest(length)

    @staticmethod
    def mac(key: bytes, *xs: bytes) -> bytes:
        return blake3.blake3(parts(*xs), key=key).digest()


def frame(kind: int, body_length: int) -> bytes:
    """The 4-byte header: version 1, type, body length (of the whole body)."""
    return u8(1) + u8(kind) + u16(body_length)


def x25519_public(private: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(private).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519(private: bytes, public: bytes) -> bytes:
    shared = X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(public)
    )
    assert shared != bytes(32)
    return shared


def ed25519_public(seed: bytes) -> bytes:
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign(seed: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def montgomery_u(edwards: bytes) -> bytes:
    """u = (1 + y) / (1 - y) mod p, y the 255 low bits (little-endian); y >= p and y = 1 refused."""
    y = int.from_bytes(edwards, "little") & ((1 << 255) - 1)
    assert y < P and y != 1
    return ((1 + y) * pow(1 - y, P - 2, P) % P).to_bytes(32, "little")


def did_key(public: bytes) -> str:
    data = b"\xed\x01" + public
    n, digits = int.from_bytes(data, "big"), ""
    while n:
        n, r = divmod(n, 58)
        digits = B58[r] + digits
    return "did:key:z" + "1" * (len(data) - len(data.lstrip(b"\0"))) + digits


def record(key: bytes, kind: int, counter: int, plaintext: bytes) -> tuple[bytes, bytes, bytes]:
    """(nonce, associated data, record): the counter big-endian in the header, little-endian
    in the nonce."""
    nonce = bytes(4) + struct.pack("<Q", counter)
    aad = frame(kind, 8 + len(plaintext) + 16) + u64(counter)
    return nonce, aad, aad + ChaCha20Poly1305(key).encrypt(nonce, plaintext, aad)


def compute(doc: dict[str, str]) -> dict[str, str]:
    """Every documented value, from the documented inputs, contexts and labels."""
    s = Schedule({k: v for k, v in doc.items() if k.startswith("context_")})
    label = {k: string(v) for k, v in doc.items() if k.startswith("label_")}
    h = bytes.fromhex
    out: dict[str, bytes | int | str] = {}

    def num(name: str) -> int:
        return int(doc[name])

    # Conventions, on a toy input.
    out["example_parts"] = parts(b"abc", b"")
    out["example_h"] = s.h(b"abc", b"")
    out["example_mac"] = s.mac(bytes(range(32)), b"abc", b"")

    # Keys.
    seed_i, seed_r = h(doc["initiator_identity_seed"]), h(doc["responder_identity_seed"])
    ik_i, ik_r = ed25519_public(seed_i), ed25519_public(seed_r)
    scalar_i, scalar_r = (hashlib.sha512(seed).digest()[:32] for seed in (seed_i, seed_r))
    out |= {
        "initiator_identity": ik_i,
        "initiator_did": did_key(ik_i),
        "initiator_identity_x25519_private": scalar_i,
        "initiator_identity_x25519": montgomery_u(ik_i),
        "responder_identity": ik_r,
        "responder_did": did_key(ik_r),
        "responder_identity_x25519_private": scalar_r,
        "responder_identity_x25519": montgomery_u(ik_r),
    }
    assert x25519_public(scalar_i) == out["initiator_identity_x25519"]
    assert x25519_public(scalar_r) == out["responder_identity_x25519"]
    spk_priv, opk_priv = h(doc["signed_prekey_private"]), h(doc["one_time_prekey_private"])
    ek_i_priv, ek_r_priv = (
        h(doc["initiator_ephemeral_private"]),
        h(doc["responder_ephemeral_private"]),
    )
    spk, opk = x25519_public(spk_priv), x25519_public(opk_priv)
    ek_i, ek_r = x25519_public(ek_i_priv), x25519_public(ek_r_priv)
    kem_seed = h(doc["kem_prekey_seed"])
    kem_pk, _ = mlkem.keygen(kem_seed[:32], kem_seed[32:])
    out |= {
        "signed_prekey": spk,
        "one_time_prekey": opk,
        "initiator_ephemeral": ek_i,
        "responder_ephemeral": ek_r,
    }

    # BUNDLE.
    spk_id, kem_id, opk_id = (
        num("signed_prekey_id"),
        num("kem_prekey_id"),
        num("one_time_prekey_id"),
    )
    signed_part = u8(1) + ik_r + u64(num("expires_at_us")) + u32(spk_id) + spk
    signed_part += u32(kem_id) + kem_pk
    opk_entry = u32(opk_id) + opk
    opk_entry += sign(seed_r, label["label_one_time_prekey"] + ik_r + u32(opk_id) + opk)
    body = signed_part + sign(seed_r, label["label_bundle"] + signed_part) + u8(1) + opk_entry
    out["bundle"] = frame(0x10, len(body)) + body

    # ML-KEM: FIPS 203 Encaps_internal(ek, m); the library used by the project decapsulates.
    ciphertext, shared = mlkem.encapsulate(kem_pk, h(doc["kem_encapsulation_randomness"]))
    library_key = library_mlkem.MLKEM768PrivateKey.from_seed_bytes(kem_seed)
    assert library_key.public_key().public_bytes_raw() == kem_pk
    assert library_key.decapsulate(ciphertext) == shared
    out["kem_shared_secret"] = shared

    # INIT and the first stage.
    now = num("now_us")
    init_signed = frame(0x01, 1270) + u8(1) + u8(1) + ik_i + ek_i + ik_r
    init_signed += u32(spk_id) + u32(kem_id) + u32(opk_id) + u64(now) + ciphertext
    th1 = s.h(signed_part, opk, init_signed)
    sig_i = sign(seed_i, label["label_init_signature"] + th1)
    out["init"] = init_signed + sig_i
    dhs = {
        "dh1": x25519(scalar_i, spk),
        "dh2": x25519(ek_i_priv, montgomery_u(ik_r)),
        "dh3": x25519(ek_i_priv, spk),
        "dh4": x25519(ek_i_priv, opk),
    }
    # The responder computes the same from its side.
    assert dhs["dh1"] == x25519(spk_priv, montgomery_u(ik_i))
    assert dhs["dh2"] == x25519(scalar_r, ek_i)
    assert dhs["dh3"] == x25519(spk_priv, ek_i)
    assert dhs["dh4"] == x25519(opk_priv, ek_i)
    ck1 = s.kdf("context_stage1", th1, *dhs.values(), shared)
    handshake_id = th1[:16]
    out |= dhs | {"th1": th1, "ck1": ck1, "handshake_id": handshake_id}

    # RESPONSE.
    dh5 = x25519(ek_i_priv, ek_r)
    assert dh5 == x25519(ek_r_priv, ek_i)
    response_header = frame(0x02, 144)
    th2 = s.h(th1, sig_i, response_header + handshake_id + ek_r)
    sig_r = sign(seed_r, label["label_response_signature"] + th2)
    master = s.kdf("context_master", ck1, dh5, th2)
    confirm_r_key = s.kdf("context_responder_confirm", master)
    confirm_r = s.mac(confirm_r_key, th2, sig_r)
    out["response"] = response_header + handshake_id + ek_r + sig_r + confirm_r
    out |= {"dh5": dh5, "th2": th2, "master": master, "responder_confirm_key": confirm_r_key}
    out["responder_confirm"] = confirm_r

    # CONFIRM.
    confirm_header = frame(0x03, 48)
    th3 = s.h(th2, sig_r, confirm_r, confirm_header + handshake_id)
    confirm_i_key = s.kdf("context_initiator_confirm", master)
    confirm_i = s.mac(confirm_i_key, th3)
    out["confirm"] = confirm_header + handshake_id + confirm_i
    out |= {"th3": th3, "initiator_confirm_key": confirm_i_key, "initiator_confirm": confirm_i}

    # The channel keys: one derivation of 112 bytes from u32(32) || master.
    block = s.kdf("context_channel_keys", master, length=112)
    key_i2r, key_r2i, resumption, session_id = block[:32], block[32:64], block[64:96], block[96:]
    out |= {
        "channel_keys_input": parts(master),
        "channel_keys_output": block,
        "key_initiator_to_responder": key_i2r,
        "key_responder_to_initiator": key_r2i,
        "resumption_secret": resumption,
        "session_id": session_id,
        "transcript_hash": th3,
    }

    # The first records, one each way.
    payload = h(doc["data_payload"])
    nonce, aad, sealed = record(key_i2r, 0x20, 0, payload)
    out |= {"data_record_nonce": nonce, "data_record_aad": aad, "first_data_record": sealed}
    nonce, aad, sealed = record(key_i2r, 0x20, 1, payload)
    out |= {
        "second_data_record_nonce": nonce,
        "second_data_record_aad": aad,
        "second_data_record": sealed,
    }
    beat = u64(num("heartbeat_sent_at_us"))
    nonce, aad, sealed = record(key_r2i, 0x21, 0, beat)
    out |= {
        "heartbeat_record_plaintext": beat,
        "heartbeat_record_nonce": nonce,
        "heartbeat_record_aad": aad,
        "first_heartbeat_record": sealed,
    }

    # What the session manager records: key material (directions by identity order), key id.
    smaller_first = ik_i < ik_r
    first, second = (key_i2r, key_r2i) if smaller_first else (key_r2i, key_i2r)
    prekeys_of_larger = ik_r > ik_i  # the responder's prekeys were used
    material = first + second + resumption + session_id
    material += u32(0) + u32(spk_id) + u32(kem_id) + u8(prekeys_of_larger)
    out["key_material"] = material
    out["key_id"] = hashlib.blake2b(material, digest_size=8).digest()

    # Resumption, from the tickets of generation 0.
    at, gen = num("resume_at_us"), 0
    rs_ek_i_priv = h(doc["resume_initiator_ephemeral_private"])
    rs_ek_r_priv = h(doc["resume_responder_ephemeral_private"])
    rs_ek_i, rs_ek_r = x25519_public(rs_ek_i_priv), x25519_public(rs_ek_r_priv)
    resume_unauthenticated = frame(0x04, 100) + session_id + u32(gen) + u32(spk_id) + u32(kem_id)
    resume_unauthenticated += rs_ek_i + u64(at)
    r_th1 = s.h(resume_unauthenticated)
    request_key = s.kdf("context_resume_request", resumption)
    r_mac = s.mac(request_key, r_th1)
    out["resume"] = resume_unauthenticated + r_mac
    r_dh = x25519(rs_ek_i_priv, rs_ek_r)
    assert r_dh == x25519(rs_ek_r_priv, rs_ek_i)
    response_prefix = frame(0x05, 80) + session_id + rs_ek_r
    r_th2 = s.h(r_th1, r_mac, response_prefix)
    r_master = s.kdf("context_resume_master", resumption, r_dh, r_th2)
    r_confirm_r_key = s.kdf("context_resume_responder_confirm", r_master)
    r_mac_r = s.mac(r_confirm_r_key, r_th2)
    out["resume_response"] = response_prefix + r_mac_r
    confirm_prefix = frame(0x06, 48) + session_id
    r_th3 = s.h(r_th2, r_mac_r, confirm_prefix)
    r_confirm_i_key = s.kdf("context_resume_initiator_confirm", r_master)
    r_mac_i = s.mac(r_confirm_i_key, r_th3)
    out["resume_confirm"] = confirm_prefix + r_mac_i
    r_block = s.kdf("context_channel_keys", r_master, length=112)
    out |= {
        "resume_initiator_ephemeral": rs_ek_i,
        "resume_responder_ephemeral": rs_ek_r,
        "resume_th1": r_th1,
        "resume_request_key": request_key,
        "resume_mac": r_mac,
        "resume_dh": r_dh,
        "resume_th2": r_th2,
        "resume_master": r_master,
        "resume_responder_confirm_key": r_confirm_r_key,
        "resume_responder_mac": r_mac_r,
        "resume_th3": r_th3,
        "resume_initiator_confirm_key": r_confirm_i_key,
        "resume_initiator_mac": r_mac_i,
        "resumed_channel_keys_output": r_block,
        "resumed_key_initiator_to_responder": r_block[:32],
        "resumed_key_responder_to_initiator": r_block[32:64],
        "resumed_resumption_secret": r_block[64:96],
        "resumed_discarded_session_id": r_block[96:],
    }
    rendered: dict[str, str] = {}
    for name, value in out.items():
        if isinstance(value, bytes):
            rendered[name] = value.hex()
        else:
            rendered[name] = str(value)
    return rendered


# --- the checks ----------------------------------------------------------------------------------


def mismatches(text: str) -> list[str]:
    """What in the document does not follow from its own inputs and definitions."""
    doc = documented(text)
    given = {n for b in GIVEN_BLOCKS for n in value_blocks(text).get(b, {})}
    try:
        computed = compute(doc)
    except Exception as error:  # a bad input (not a key, say): that is a finding too
        return [f"the documented inputs do not compute: {error!r}"]
    problems = [f"{n}: documented but not computed" for n in doc.keys() - computed.keys() - given]
    problems += [f"{n}: computed but not documented" for n in computed.keys() - doc.keys()]
    problems += [
        f"{n}: documented {doc[n]}, computed {computed[n]}"
        for n in computed.keys() & doc.keys()
        if doc[n] != computed[n]
    ]
    return problems


def regenerate(text: str) -> str:
    computed = compute(documented(text))

    def rewrite(match: re.Match[str]) -> str:
        if match.group(1) in GIVEN_BLOCKS:
            return match.group(0)
        names = list(value_blocks(match.group(0))[match.group(1)])
        width = max(len(n) for n in names) + 2
        lines = []
        for name in names:
            value = computed[name]
            lines.append(f"{name:{width}}{value[:64]}")
            lines += [" " * width + value[i : i + 64] for i in range(64, len(value), 64)]
        return f"<!-- values:{match.group(1)} -->\n```\n" + "\n".join(lines) + "\n```"

    return BLOCK.sub(rewrite, text)


@pytest.fixture(scope="module")
def text() -> str:
    if REGENERATE:
        DOC.write_text(regenerate(DOC.read_text()))
    return DOC.read_text()


def test_every_documented_value_follows_from_the_documented_inputs(text: str) -> None:
    assert mismatches(text) == []


def test_the_code_sends_the_documented_bytes_from_the_documented_inputs(text: str) -> None:
    doc = documented(text)
    vector = json.loads(VECTOR_FILE.read_text())["inputs"]
    inputs = {name: int(doc[name]) if isinstance(vector[name], int) else doc[name] for name in (
        set(vector) - {"kem_ciphertext", "kem_shared_secret"}
    )}  # fmt: skip
    # The encapsulation from m, as the document says; the code takes it as recorded.
    kem_seed = bytes.fromhex(doc["kem_prekey_seed"])
    kem_pk, _ = mlkem.keygen(kem_seed[:32], kem_seed[32:])
    ciphertext, shared = mlkem.encapsulate(
        kem_pk, bytes.fromhex(doc["kem_encapsulation_randomness"])
    )
    inputs |= {"kem_ciphertext": ciphertext.hex(), "kem_shared_secret": shared.hex()}
    assert inputs == vector, "docs/handshake.md and tests/vectors/handshake_v1.json differ"
    for name, value in build(inputs).items():
        assert doc[name] == value, f"{name}: the code computes {value}"


def test_the_codes_constants_are_the_documented_ones(text: str) -> None:
    from l2_session.domain.handshake import bundle as handshake_bundle
    from l2_session.domain.handshake import keys as handshake_keys

    doc = documented(text)
    code = {
        "context_transcript": handshake_keys.CONTEXT_TRANSCRIPT,
        "context_stage1": handshake_keys.CONTEXT_STAGE1,
        "context_master": handshake_keys.CONTEXT_MASTER,
        "context_responder_confirm": handshake_keys.CONTEXT_CONFIRM_RESPONDER,
        "context_initiator_confirm": handshake_keys.CONTEXT_CONFIRM_INITIATOR,
        "context_channel_keys": handshake_keys.CONTEXT_CHANNEL_KEYS,
        "context_resume_request": handshake_keys.CONTEXT_RESUME_AUTH,
        "context_resume_master": handshake_keys.CONTEXT_RESUME_MASTER,
        "context_resume_responder_confirm": handshake_keys.CONTEXT_RESUME_CONFIRM_RESPONDER,
        "context_resume_initiator_confirm": handshake_keys.CONTEXT_RESUME_CONFIRM_INITIATOR,
        "label_bundle": handshake_bundle.LABEL_BUNDLE,
        "label_one_time_prekey": handshake_bundle.LABEL_ONE_TIME_PREKEY,
        "label_init_signature": handshake_keys.LABEL_INIT_SIGNATURE,
        "label_response_signature": handshake_keys.LABEL_RESPONSE_SIGNATURE,
    }
    assert set(code) == {n for n in doc if n.startswith(("context_", "label_"))}
    for name, value in code.items():
        expected = value.encode() if isinstance(value, str) else value
        assert string(doc[name]) == expected, name


def test_the_code_maps_identities_and_records_keys_as_documented(text: str) -> None:
    from l2_session.domain.handshake.channel import Channel
    from l2_session.domain.handshake.keys import (
        SessionKeys,
        ed25519_private_to_x25519,
        ed25519_public_to_x25519,
        x25519_public_bytes,
    )
    from l2_session.domain.manager.pqxdh import key_material
    from l2_session.domain.session.core import key_id_of
    from l2_session.infrastructure.identity import did_key_from_public_bytes

    doc = documented(text)
    for side in ("initiator", "responder"):
        public = bytes.fromhex(doc[f"{side}_identity"])
        private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(doc[f"{side}_identity_seed"]))
        assert ed25519_public_to_x25519(public).hex() == doc[f"{side}_identity_x25519"]
        x_private = ed25519_private_to_x25519(private)
        assert x25519_public_bytes(x_private).hex() == doc[f"{side}_identity_x25519"]
        assert did_key_from_public_bytes(public) == doc[f"{side}_did"]
    h = bytes.fromhex
    initiator_keys = SessionKeys(
        session_id=h(doc["session_id"]),
        send_key=h(doc["key_initiator_to_responder"]),
        receive_key=h(doc["key_responder_to_initiator"]),
        peer_identity=h(doc["responder_identity"]),
        is_initiator=True,
        transcript_hash=h(doc["th3"]),
        resumption_secret=h(doc["resumption_secret"]),
        generation=0,
        prekey_ids=(int(doc["signed_prekey_id"]), int(doc["kem_prekey_id"])),
    )
    material = key_material(initiator_keys, h(doc["initiator_identity"]), prekeys_mine=False)
    assert material.hex() == doc["key_material"]
    assert key_id_of(material) == doc["key_id"]
    channel = Channel(initiator_keys)
    assert channel.seal(h(doc["data_payload"])).hex() == doc["first_data_record"]
    assert channel.seal(h(doc["data_payload"])).hex() == doc["second_data_record"]


FIELD_TABLE = re.compile(r"^\| offset \|.*\n\|[-|]+\n((?:\|.*\n)+)", re.MULTILINE)
TABLE_MESSAGES = (
    "bundle",
    "init",
    "response",
    "confirm",
    "resume",
    "resume_response",
    "resume_confirm",
)


def test_the_documents_prose_agrees_with_its_values(text: str) -> None:
    """The field tables, fixed headers and quoted strings outside the value blocks say what the
    checked values say."""
    doc = documented(text)
    tables = FIELD_TABLE.findall(text)
    assert len(tables) == len(TABLE_MESSAGES)
    for name, rows in zip(TABLE_MESSAGES, tables, strict=True):
        message = bytes.fromhex(doc[name])
        at = 0
        for row in rows.strip().splitlines():
            offset, field, size = (cell.strip() for cell in row.strip("|").split(" | "))
            assert int(offset) == at, f"{name}: {field} at {offset}, expected {at}"
            header = re.search(r"`((?:[0-9a-f]{2} ){3}[0-9a-f]{2})`", field)
            if header:
                assert message[:4] == bytes.fromhex(header.group(1).replace(" ", "")), name
            at += int(size.removesuffix(" each"))
        assert at == len(message), f"{name}: fields add up to {at}, the example is {len(message)}"
    for row in re.findall(r"^\| (\w+) header \| `([0-9a-f ]+)`", text, re.MULTILINE):
        assert doc[row[0].lower()][:8] == row[1].replace(" ", ""), row
    strings = {
        string(v).decode().rstrip("\0")
        for k, v in doc.items()
        if k.startswith(("context_", "label_"))
    }
    for quoted in re.findall(r'"(l2-session [^"]*?)(?:\\0)?"', text):
        assert quoted in strings, f"{quoted!r} is not a documented context or label"


def _change_value(name: str) -> Callable[[str], str]:
    def change(text: str) -> str:
        doc = documented(text)
        old = doc[name]
        first = old[:64]  # as written on the value's first line
        flipped = ("0" if first[0] != "0" else "1") + first[1:]
        if old.startswith('"'):
            flipped = first.replace("v1", "v2", 1)
        assert text.count(f"{name} ") >= 1
        at = text.index(first, text.index(f"\n{name} "))
        return text[:at] + flipped + text[at + len(first) :]

    return change


def _change_message_byte(text: str) -> str:
    # One byte of the INIT's kem ciphertext, in the rendered worked example.
    start = text.index("<!-- worked-example:begin -->")
    at = text.index("kem ciphertext", start)
    at = text.index("  ", at + len("kem ciphertext")) + 1
    while text[at] == " ":
        at += 1
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


@pytest.mark.parametrize(
    "change",
    [
        _change_value("kem_encapsulation_randomness"),
        _change_value("now_us"),
        _change_value("context_channel_keys"),
        _change_value("label_init_signature"),
        _change_value("ck1"),
        _change_value("channel_keys_input"),
        _change_value("resume_master"),
        _change_value("key_id"),
        _change_message_byte,
    ],
)
def test_a_changed_byte_in_the_document_is_caught(text: str, change: Callable[[str], str]) -> None:
    changed = change(text)
    assert changed != text
    assert mismatches(changed) != []
