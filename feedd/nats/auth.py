"""Logging in with a NATS ``.creds`` file: the user JWT, and the server's nonce signed with the
user's nkey seed (Ed25519). Imported only when ``[nats] credentials`` is set; the signature
needs the ``cryptography`` package (``pip install 'feedd[nats]'``).

A ``.creds`` file holds two armored blocks, ``NATS USER JWT`` and ``USER NKEY SEED``. A file
with the seed block alone logs in by nkey (the server lists the user's public key). An nkey
seed is base32 of two prefix bytes, the 32-byte Ed25519 seed and a CRC-16 (XMODEM); the public
key, likewise, of one prefix byte (``U`` for users), the 32-byte key and a CRC-16.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Any

from feedd.errors import CredentialsError

_BLOCK = re.compile(r"-{3,}BEGIN ([A-Z ]+)-{3,}\s*(.+?)\s*-{3,}END \1-{3,}", re.DOTALL)
#: the first five bits of a seed's first byte say "seed"; the type's prefix follows
_PREFIX_SEED = 18 << 3


def read_creds(path: str) -> tuple[str | None, str]:
    """The user JWT (None in a seed-only file) and the nkey seed of a ``.creds`` file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CredentialsError(f"cannot read credentials {path}: {exc}") from None
    blocks = {name.strip(): body.strip() for name, body in _BLOCK.findall(text)}
    seed = blocks.get("USER NKEY SEED")
    if seed is None:
        raise CredentialsError(f"{path}: no USER NKEY SEED block")
    return blocks.get("NATS USER JWT"), seed


def _b32decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 8)
    try:
        return base64.b32decode(padded)
    except binascii.Error as exc:
        raise CredentialsError(f"not an nkey: {exc}") from None


def _b32encode(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=")


def _checked(data: bytes) -> bytes:
    body, crc = data[:-2], data[-2:]
    if len(data) < 3 or binascii.crc_hqx(body, 0) != int.from_bytes(crc, "little"):
        raise CredentialsError("nkey checksum mismatch")
    return body


def decode_seed(seed: str) -> tuple[int, bytes]:
    """(the key type's prefix byte, the 32-byte Ed25519 seed) of an encoded nkey seed."""
    raw = _checked(_b32decode(seed.strip()))
    if len(raw) != 34 or raw[0] & 0xF8 != _PREFIX_SEED:
        raise CredentialsError("not an nkey seed")
    kind = ((raw[0] & 0x07) << 5) | (raw[1] >> 3)
    return kind, raw[2:]


def encode_public(kind: int, key: bytes) -> str:
    """An encoded public nkey (``U...`` for a user) of a raw 32-byte Ed25519 public key."""
    body = bytes([kind]) + key
    return _b32encode(body + binascii.crc_hqx(body, 0).to_bytes(2, "little"))


def encode_seed(kind: int, seed: bytes) -> str:
    """The encoded nkey seed (``SU...`` for a user) of a raw 32-byte Ed25519 seed."""
    body = bytes([_PREFIX_SEED | (kind >> 5), (kind & 31) << 3]) + seed
    return _b32encode(body + binascii.crc_hqx(body, 0).to_bytes(2, "little"))


def connect_fields(path: str, nonce: object) -> dict[str, Any]:
    """The ``CONNECT`` fields that log in with the credentials at ``path``: ``jwt`` (if the
    file has one) or ``nkey``, and ``sig``, the nonce signed."""
    jwt, seed = read_creds(path)
    if not isinstance(nonce, str):
        raise CredentialsError(f"{path}: the server sent no nonce to sign (does it use nkeys or JWTs?)")
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    except ImportError:
        raise CredentialsError("[nats] credentials needs the cryptography package: "
                               "pip install 'feedd[nats]'") from None
    try:
        kind, raw = decode_seed(seed)
    except CredentialsError as exc:
        raise CredentialsError(f"{path}: {exc}") from None
    key = Ed25519PrivateKey.from_private_bytes(raw)
    fields: dict[str, Any] = {
        "sig": base64.urlsafe_b64encode(key.sign(nonce.encode())).decode().rstrip("="),
    }
    if jwt is not None:
        fields["jwt"] = jwt
    else:
        fields["nkey"] = encode_public(kind, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    return fields
