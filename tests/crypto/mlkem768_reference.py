"""ML-KEM-768 key generation and encapsulation from their FIPS 203 randomness, in plain Python.

Neither ML-KEM library the project uses takes the encapsulation randomness ``m`` (FIPS 203
§6.2 ML-KEM.Encaps_internal), so docs/handshake.md's worked example could not otherwise say
where its KEM ciphertext comes from. This is FIPS 203's ML-KEM.KeyGen_internal(d, z) and
ML-KEM.Encaps_internal(ek, m) for parameter set ML-KEM-768, written from the standard for the
test only: not constant time, never for real keys. test_mlkem_reference.py holds it to
Wycheproof's seeded key generation and derandomized encapsulation vectors, and to both libraries
(the same public key from the same seed; each decapsulates the ciphertext made here to the shared
secret made here).
"""

from __future__ import annotations

import hashlib

N, Q, K, ETA1, ETA2, DU, DV = 256, 3329, 3, 2, 2, 10, 4


def _bitrev7(i: int) -> int:
    return int(f"{i:07b}"[::-1], 2)


ZETAS = [pow(17, _bitrev7(i), Q) for i in range(128)]
GAMMAS = [pow(17, 2 * _bitrev7(i) + 1, Q) for i in range(128)]


def _g(data: bytes) -> tuple[bytes, bytes]:  # G = SHA3-512, split in halves
    out = hashlib.sha3_512(data).digest()
    return out[:32], out[32:]


def _h(data: bytes) -> bytes:  # H = SHA3-256
    return hashlib.sha3_256(data).digest()


def _prf(eta: int, seed: bytes, n: int) -> bytes:  # PRF_eta(s, b) = SHAKE256(s || b, 64 eta)
    return hashlib.shake_256(seed + bytes([n])).digest(64 * eta)


def _sample_ntt(rho: bytes, j: int, i: int) -> list[int]:
    """Algorithm 7 SampleNTT on XOF(rho || j || i) = SHAKE128."""
    stream = hashlib.shake_128(rho + bytes([j, i])).digest(1024)
    out: list[int] = []
    at = 0
    while len(out) < N:
        if at + 3 > len(stream):
            stream = hashlib.shake_128(rho + bytes([j, i])).digest(2 * len(stream))
        b0, b1, b2 = stream[at], stream[at + 1], stream[at + 2]
        at += 3
        d1, d2 = b0 + 256 * (b1 % 16), b1 // 16 + 16 * b2
        if d1 < Q:
            out.append(d1)
        if d2 < Q and len(out) < N:
            out.append(d2)
    return out


def _cbd(eta: int, data: bytes) -> list[int]:
    """Algorithm 8 SamplePolyCBD_eta."""
    bits = [(data[i // 8] >> (i % 8)) & 1 for i in range(8 * len(data))]
    out = []
    for i in range(N):
        at = 2 * i * eta
        out.append((sum(bits[at : at + eta]) - sum(bits[at + eta : at + 2 * eta])) % Q)
    return out


def _ntt(f: list[int]) -> list[int]:
    """Algorithm 9."""
    f = list(f)
    i, length = 1, 128
    while length >= 2:
        for start in range(0, N, 2 * length):
            zeta = ZETAS[i]
            i += 1
            for j in range(start, start + length):
                t = zeta * f[j + length] % Q
                f[j + length] = (f[j] - t) % Q
                f[j] = (f[j] + t) % Q
        length //= 2
    return f


def _ntt_inverse(f: list[int]) -> list[int]:
    """Algorithm 10."""
    f = list(f)
    i, length = 127, 2
    while length <= 128:
        for start in range(0, N, 2 * length):
            zeta = ZETAS[i]
            i -= 1
            for j in range(start, start + length):
                t = f[j]
                f[j] = (t + f[j + length]) % Q
                f[j + length] = zeta * (f[j + length] - t) % Q
        length *= 2
    return [x * 3303 % Q for x in f]  # 3303 = 128^-1 mod q


def _multiply_ntts(f: list[int], g: list[int]) -> list[int]:
    """Algorithms 11 and 12."""
    h = [0] * N
    for i in range(128):
        a0, a1, b0, b1 = f[2 * i], f[2 * i + 1], g[2 * i], g[2 * i + 1]
        h[2 * i] = (a0 * b0 + a1 * b1 * GAMMAS[i]) % Q
        h[2 * i + 1] = (a0 * b1 + a1 * b0) % Q
    return h


def _add(f: list[int], g: list[int]) -> list[int]:
    return [(a + b) % Q for a, b in zip(f, g, strict=True)]


def _encode(d: int, f: list[int]) -> bytes:
    """Algorithm 5 ByteEncode_d: each coefficient in d bits, least significant bit first."""
    value = 0
    for i, x in enumerate(f):
        value |= x << (d * i)
    return value.to_bytes(32 * d, "little")


def _decode(d: int, data: bytes) -> list[int]:
    """Algorithm 6 ByteDecode_d."""
    value, mask = int.from_bytes(data, "little"), (1 << d) - 1
    return [(value >> (d * i)) & mask for i in range(N)]


def _compress(d: int, f: list[int]) -> list[int]:
    # round(2^d / q * x) mod 2^d, in integers: floor((2^(d+1) x + q) / 2q)
    return [((x << (d + 1)) + Q) // (2 * Q) % (1 << d) for x in f]


def _decompress(d: int, f: list[int]) -> list[int]:
    return [(x * Q + (1 << (d - 1))) >> d for x in f]


def _matrix(rho: bytes) -> list[list[list[int]]]:
    return [[_sample_ntt(rho, j, i) for j in range(K)] for i in range(K)]


def keygen(d: bytes, z: bytes) -> tuple[bytes, bytes]:
    """ML-KEM.KeyGen_internal(d, z) (Algorithms 13 and 16): (ek, dk)."""
    rho, sigma = _g(d + bytes([K]))
    a = _matrix(rho)
    s = [_cbd(ETA1, _prf(ETA1, sigma, n)) for n in range(K)]
    e = [_cbd(ETA1, _prf(ETA1, sigma, K + n)) for n in range(K)]
    s_hat, e_hat = [_ntt(p) for p in s], [_ntt(p) for p in e]
    t_hat = []
    for i in range(K):
        acc = e_hat[i]
        for j in range(K):
            acc = _add(acc, _multiply_ntts(a[i][j], s_hat[j]))
        t_hat.append(acc)
    ek = b"".join(_encode(12, p) for p in t_hat) + rho
    dk = b"".join(_encode(12, p) for p in s_hat) + ek + _h(ek) + z
    return ek, dk


def encapsulate(ek: bytes, m: bytes) -> tuple[bytes, bytes]:
    """ML-KEM.Encaps_internal(ek, m) (Algorithms 14 and 17): (ciphertext, shared secret)."""
    shared, r = _g(m + _h(ek))
    t_hat = [_decode(12, ek[384 * i : 384 * (i + 1)]) for i in range(K)]
    a = _matrix(ek[384 * K :])
    y = [_cbd(ETA1, _prf(ETA1, r, n)) for n in range(K)]
    e1 = [_cbd(ETA2, _prf(ETA2, r, K + n)) for n in range(K)]
    e2 = _cbd(ETA2, _prf(ETA2, r, 2 * K))
    y_hat = [_ntt(p) for p in y]
    u = []
    for i in range(K):  # A transposed: row i takes a[j][i]
        acc = [0] * N
        for j in range(K):
            acc = _add(acc, _multiply_ntts(a[j][i], y_hat[j]))
        u.append(_add(_ntt_inverse(acc), e1[i]))
    mu = _decompress(1, _decode(1, m))
    acc = [0] * N
    for j in range(K):
        acc = _add(acc, _multiply_ntts(t_hat[j], y_hat[j]))
    v = _add(_add(_ntt_inverse(acc), e2), mu)
    c1 = b"".join(_encode(DU, _compress(DU, p)) for p in u)
    c2 = _encode(DV, _compress(DV, v))
    return c1 + c2, shared
