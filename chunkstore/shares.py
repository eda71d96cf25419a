"""Erasure-coded shares of a chunk's envelope (``--code K-of-N``), with zfec as Tahoe-LAFS uses it.

An envelope (already encrypted: a share reveals nothing an envelope does not) is cut into K
equal pieces, the last padded with zeros, and zfec makes N shares of them, any K of which give
the envelope back. Each share is an item of its own on a holder, filed under an address derived
from the chunk's address and the share's number, so whoever holds one share can name all of
its siblings, and a holder can rebuild a missing share from any K others without any key.

A share verifies alone (``docs/formats.md`` has the byte layout):

* every share carries the same *family*: K, N, the chunk's address, the envelope's length and
  the SHA-256 of each of the N shares' data, sealed by the owner (BLAKE2b keyed with its share
  key). The owner checks the seal and the share's own data against its digest; the seal is the
  same in every share, so a share rebuilt by a holder is byte for byte the one the owner made;
* a holder, which has no key, checks a share it fetches against the family of the share it
  holds itself (which came from the owner): same family, data matching its digest.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import zfec

from .envelope import ADDRESS_OFFSET, ADDRESS_SIZE, MAX_ENVELOPE_SIZE, MIN_ENVELOPE_SIZE
from .errors import EnvelopeError

SHARE_KIND = 2  # the first byte: an envelope's is its version, 1
MAX_SHARES = 16  # N of K-of-N
DIGEST_SIZE = 32
SEAL_SIZE = 32
# kind, K, share address, N, number, chunk address, envelope length
_HEAD = struct.Struct(">BB32sBB32sI")
_ADDRESS_DOMAIN = b"lanvault-share-v1"
_SEAL_PERSON = b"lanvault:shares"


def header_size(n: int) -> int:
    return _HEAD.size + DIGEST_SIZE * n + SEAL_SIZE


def data_size(envelope_length: int, k: int) -> int:
    """Bytes of data in each share of a ``k``-of-n code of an envelope this long."""
    return -(-envelope_length // k)


MIN_SHARE_SIZE = header_size(3) + 1  # 2-of-3 of a 1-byte envelope
MAX_SHARE_SIZE = header_size(MAX_SHARES) + data_size(MAX_ENVELOPE_SIZE, 2)  # 2-of-16
# A share is an item like an envelope on holders and on the wire, within an envelope's bounds.
assert MIN_ENVELOPE_SIZE <= MIN_SHARE_SIZE and MAX_SHARE_SIZE <= MAX_ENVELOPE_SIZE


class ShareError(EnvelopeError):
    """A share that is not what it claims to be: malformed, of another family, or rotten."""


@dataclass(frozen=True, slots=True)
class Code:
    """K-of-N: N shares, any K of which rebuild the chunk (2 <= K < N <= 16; 1-of-N would be
    N copies, which ``--degree`` makes without the code's headers)."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and isinstance(self.n, int)):
            raise ValueError("a code is two whole numbers, K-of-N")
        if self.k == 1 and 1 < self.n <= MAX_SHARES:
            raise ValueError(f"1-of-{self.n} is {self.n} copies: use a degree of {self.n}")
        if not 2 <= self.k < self.n <= MAX_SHARES:
            raise ValueError(f"{self.k}-of-{self.n}: a code needs 2 <= K < N <= {MAX_SHARES}")

    @classmethod
    def parse(cls, text: str) -> Code:
        """``"2-of-4"`` (also ``2of4``, ``2/4``); ValueError with one clear line otherwise."""
        cleaned = text.strip().lower().replace("-of-", "/").replace("of", "/")
        parts = cleaned.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"{text!r} is not a code: write K-of-N, for example 2-of-4")
        return cls(int(parts[0]), int(parts[1]))

    def __str__(self) -> str:
        return f"{self.k}-of-{self.n}"

    def as_degree(self) -> int:
        """How a catalog records the code in a version's degree: ``32 * K + N`` (at least 67,
        never a number of copies, 1..9)."""
        return 32 * self.k + self.n

    @classmethod
    def of_degree(cls, degree: int) -> Code | None:
        """The code a version's recorded degree names, or None for a number of copies."""
        if 1 <= degree <= 9:
            return None
        code = cls(degree // 32, degree % 32)
        if code.as_degree() != degree:
            raise ValueError(f"degree {degree} names neither copies nor a code")
        return code

    @property
    def stored_ratio(self) -> float:
        """Bytes stored per byte of envelope (headers aside): N / K."""
        return self.n / self.k

    @property
    def survives(self) -> int:
        """How many holders may be lost with the chunk still whole: N - K."""
        return self.n - self.k


@functools.lru_cache(maxsize=1 << 16)  # asked many times per share along one backup
def share_address(chunk_address: bytes, number: int) -> bytes:
    """Where share ``number`` of a chunk is filed: anyone who knows the chunk's address (a
    holder of one of its shares does) can name every share, but not the reverse."""
    if len(chunk_address) != ADDRESS_SIZE or not 0 <= number < MAX_SHARES:
        raise ValueError("a share address needs a 32-byte chunk address and a number 0..15")
    return hashlib.sha256(_ADDRESS_DOMAIN + chunk_address + bytes([number])).digest()


@dataclass(frozen=True, slots=True)
class Family:
    """What every share of one chunk carries alike."""

    k: int
    n: int
    chunk_address: bytes
    envelope_length: int
    digests: tuple[bytes, ...]
    seal: bytes

    def sealed_bytes(self) -> bytes:
        return (
            struct.pack(">BBI", self.k, self.n, self.envelope_length)
            + self.chunk_address
            + b"".join(self.digests)
        )

    def seal_with(self, share_key: bytes) -> bytes:
        return hashlib.blake2b(
            self.sealed_bytes(), key=share_key, person=_SEAL_PERSON, digest_size=SEAL_SIZE
        ).digest()


@dataclass(frozen=True, slots=True)
class Share:
    family: Family
    number: int
    data: bytes

    @property
    def address(self) -> bytes:
        return share_address(self.family.chunk_address, self.number)

    def to_bytes(self) -> bytes:
        f = self.family
        head = _HEAD.pack(
            SHARE_KIND, f.k, self.address, f.n, self.number, f.chunk_address, f.envelope_length
        )
        return head + b"".join(f.digests) + f.seal + self.data


@dataclass(frozen=True, slots=True)
class ShareRef:
    """What a holder's index keeps of a share it holds: enough to name its siblings and to
    know how many of them rebuild it, without reading the share."""

    chunk_address: bytes
    k: int
    n: int
    number: int

    def to_bytes(self) -> bytes:
        return self.chunk_address + bytes([self.k, self.n, self.number])

    @classmethod
    def from_bytes(cls, raw: bytes) -> ShareRef:
        if len(raw) != ADDRESS_SIZE + 3:
            raise ShareError("a share reference is 35 bytes")
        k, n, number = raw[ADDRESS_SIZE:]
        return cls(bytes(raw[:ADDRESS_SIZE]), k, n, number)

    @property
    def address(self) -> bytes:
        return share_address(self.chunk_address, self.number)

    def siblings(self) -> list[bytes]:
        """Every share's address, in number order (this one's included)."""
        return [share_address(self.chunk_address, i) for i in range(self.n)]


def ref_of(blob: bytes) -> ShareRef:
    """The reference of a share already checked by ``parse`` (its header only is read)."""
    _kind, k, _address, n, number, chunk_address, _length = _HEAD.unpack_from(blob)
    return ShareRef(chunk_address, k, n, number)


def is_share(blob: bytes) -> bool:
    """Whether a stored item is a share (else a whole envelope)."""
    return len(blob) > 0 and blob[0] == SHARE_KIND


def parse(blob: bytes) -> Share:
    """A share's fields, checked for consistency alone (no key): its kind, code, address, size,
    and its data against its own digest. ``ShareError`` says what is wrong, in one line."""
    if len(blob) < MIN_SHARE_SIZE:
        raise ShareError(f"truncated share: {len(blob)} bytes")
    kind, k, address, n, number, chunk_address, length = _HEAD.unpack_from(blob)
    if kind != SHARE_KIND:
        raise ShareError(f"not a share (kind {kind})")
    if not 2 <= k < n <= MAX_SHARES or number >= n:
        raise ShareError(f"share {number} of an impossible code {k}-of-{n}")
    if not 1 <= length <= MAX_ENVELOPE_SIZE:
        raise ShareError(f"share of an envelope of impossible length {length}")
    head = header_size(n)
    if len(blob) != head + data_size(length, k):
        raise ShareError(
            f"share of {len(blob)} bytes, expected {head + data_size(length, k)} "
            f"for {k}-of-{n} of {length} bytes"
        )
    if address != share_address(chunk_address, number):
        raise ShareError("share filed under the wrong address")
    digests = tuple(
        blob[_HEAD.size + i * DIGEST_SIZE : _HEAD.size + (i + 1) * DIGEST_SIZE] for i in range(n)
    )
    seal = blob[head - SEAL_SIZE : head]
    data = blob[head:]
    if hashlib.sha256(data).digest() != digests[number]:
        raise ShareError(f"share {number}'s data does not match its digest")
    return Share(Family(k, n, chunk_address, length, digests, seal), number, data)


def verify(
    blob: bytes, address: bytes, *, share_key: bytes | None = None, family: Family | None = None
) -> Share:
    """``parse`` and check the share is the one asked for: filed under ``address``, and sealed
    by the owner (``share_key``, the owner's check) or of ``family`` (a holder's check, against
    a share it holds of the same chunk)."""
    share = parse(blob)
    if blob[ADDRESS_OFFSET : ADDRESS_OFFSET + ADDRESS_SIZE] != address:
        raise ShareError("share of another address")
    if share_key is not None and not hmac.compare_digest(
        share.family.seal_with(share_key), share.family.seal
    ):
        raise ShareError("share's seal is not its owner's: forged or tampered")
    if family is not None and share.family != family:
        raise ShareError("share of another family than its siblings")
    return share


def encode(envelope: bytes, chunk_address: bytes, code: Code, share_key: bytes) -> list[bytes]:
    """The N shares of ``envelope``, in number order."""
    if not 1 <= len(envelope) <= MAX_ENVELOPE_SIZE:
        raise ValueError(f"an envelope of {len(envelope)} bytes cannot be shared")
    size = data_size(len(envelope), code.k)
    padded = envelope + bytes(size * code.k - len(envelope))
    pieces = tuple(padded[i * size : (i + 1) * size] for i in range(code.k))
    datas = [bytes(b) for b in zfec.Encoder(code.k, code.n).encode(pieces)]
    digests = tuple(hashlib.sha256(d).digest() for d in datas)
    unsealed = Family(code.k, code.n, chunk_address, len(envelope), digests, b"")
    family = Family(
        code.k, code.n, chunk_address, len(envelope), digests, unsealed.seal_with(share_key)
    )
    return [Share(family, i, d).to_bytes() for i, d in enumerate(datas)]


def _primary(shares: Sequence[Share]) -> tuple[Family, list[bytes]]:
    """The K primary pieces from any K shares of one family (checked)."""
    if not shares:
        raise ShareError("no shares to decode")
    family = shares[0].family
    chosen: dict[int, Share] = {}
    for share in shares:
        if share.family != family:
            raise ShareError("shares of different families cannot be decoded together")
        chosen.setdefault(share.number, share)
    if len(chosen) < family.k:
        raise ShareError(f"{len(chosen)} distinct shares of a {family.k}-of-{family.n} code")
    picked = sorted(chosen.values(), key=lambda s: s.number)[: family.k]
    pieces = zfec.Decoder(family.k, family.n).decode(
        tuple(s.data for s in picked), tuple(s.number for s in picked)
    )
    return family, [bytes(p) for p in pieces]


def decode(shares: Sequence[Share]) -> bytes:
    """The envelope, from any K distinct shares of one family."""
    family, pieces = _primary(shares)
    return b"".join(pieces)[: family.envelope_length]


def rebuild(shares: Sequence[Share], numbers: Sequence[int]) -> list[bytes]:
    """Shares ``numbers`` made anew from any K others, without a key: what a holder does to
    repair. Each is checked against the family's digest, so shares that decode to something
    else than the owner made (a lying holder) are refused, never stored."""
    family, pieces = _primary(shares)
    wanted = tuple(sorted(set(numbers)))
    if any(not 0 <= i < family.n for i in wanted):
        raise ValueError(f"share numbers of a {family.k}-of-{family.n} code are 0..{family.n - 1}")
    datas = zfec.Encoder(family.k, family.n).encode(tuple(pieces), wanted)
    made = []
    for i, data in zip(wanted, datas, strict=True):
        if hashlib.sha256(data).digest() != family.digests[i]:
            raise ShareError(f"share {i} rebuilt does not match its digest: a share lied")
        made.append(Share(family, i, bytes(data)).to_bytes())
    return made


def items_of(address: bytes, degree: int) -> list[bytes]:
    """What holders keep of a chunk recorded at ``degree``: the chunk itself (copies), or
    each of its N shares; the addresses the catalog's holder rows are about."""
    code = Code.of_degree(degree)
    if code is None:
        return [address]
    return [share_address(address, i) for i in range(code.n)]


def is_safe(address: bytes, degree: int, holders: Mapping[bytes, Collection[int]]) -> bool:
    """Whether a chunk is kept as ``degree`` asks, by ``holders`` (item address -> the nodes
    holding it): ``degree`` copies, or every one of its N shares on some node."""
    code = Code.of_degree(degree)
    if code is None:
        return len(holders.get(address, ())) >= degree
    return all(holders.get(share_address(address, i)) for i in range(code.n))


def shortfall(address: bytes, degree: int, holders: Mapping[bytes, Collection[int]]) -> str:
    """What a chunk lacks, in a few words ("1 of 2 copies", "3 of 4 shares")."""
    code = Code.of_degree(degree)
    if code is None:
        return f"{len(holders.get(address, ()))} of {degree} copies"
    present = sum(1 for i in range(code.n) if holders.get(share_address(address, i)))
    return f"{present} of {code.n} shares ({code})"


def parse_keeping(text: str) -> int | None:
    """How a person or a ``user.lanvault.degree`` attribute says to keep a file: copies
    ("2", 1..9) or a code ("2-of-4"), as a recorded degree; None for anything else."""
    text = text.strip()
    if text.isdigit():
        return int(text) if 1 <= int(text) <= 9 else None
    try:
        return Code.parse(text).as_degree()
    except ValueError:
        return None


def describe(degree: int) -> str:
    """A recorded degree as a person says it: "degree 2" or "code 2-of-4"."""
    code = Code.of_degree(degree)
    return f"degree {degree}" if code is None else f"code {code}"
