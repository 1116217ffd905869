"""Signing ``.nnc`` files: knowing who wrote one.

The container's CRCs only catch accidents: whoever edits a file can recompute them, and a
value edit then loads as a valid, different model. A signed file carries an HMAC-SHA256
(RFC 2104) of its whole content under a secret key shared by writer and reader; loading
with ``verify_key=`` rejects a file that is unsigned or whose content changed after
signing.

What the MAC covers: a domain tag, the header metadata (every field except the signature
itself, in file order, as canonical JSON) and every section (name, length, bytes) in file
order. Changing any value, tensor, record or section, or moving bytes between sections,
changes the MAC. The signature lives in the header field ``signature``:
``{"alg": "hmac-sha256", "mac": "<64 hex digits>"}``.

A key is a file of 16 to 4096 bytes, e.g. ``head -c 32 /dev/urandom > nnc.key``; keep it
secret: whoever holds it can sign.

Example:
    >>> import tempfile; from pathlib import Path
    >>> import nncompress
    >>> from nncompress.models import build_model
    >>> path, key = Path(tempfile.mkdtemp()) / "model.nnc", b"k" * 32
    >>> _ = nncompress.save(build_model("lenet300"), path)
    >>> sign_file(path, key).name
    'model.nnc'
    >>> type(nncompress.load(path, verify_key=key)).__name__
    'LeNet300100'
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nncompress.errors import ConfigError, FormatError
from nncompress.format.container import Container, pack_container, unpack_container

ALG = "hmac-sha256"
_TAG = b"nncompress-signature-v1\x00"
MIN_KEY, MAX_KEY = 16, 4096

KeyLike = bytes | str | Path


def read_key(key: KeyLike) -> bytes:
    """The key bytes: ``key`` itself when it is bytes, else the content of the key file
    ``key`` names. Raises ``ConfigError`` for a missing file or a key outside 16..4096 bytes.

    Example:
        >>> len(read_key(b"0123456789abcdef"))
        16
    """
    if isinstance(key, (bytes, bytearray)):
        data = bytes(key)
        what = "the key"
    else:
        path = Path(key)
        if not path.is_file():
            raise ConfigError(f"key file {str(path)!r} does not exist or is not a file "
                              "(make one with: head -c 32 /dev/urandom > KEYFILE)")
        if path.stat().st_size > MAX_KEY:
            raise ConfigError(f"key file {str(path)!r} has {path.stat().st_size} bytes; allowed: "
                              f"{MIN_KEY}..{MAX_KEY}")
        data = path.read_bytes()
        what = f"key file {str(path)!r}"
    if not MIN_KEY <= len(data) <= MAX_KEY:
        raise ConfigError(f"{what} has {len(data)} bytes; allowed: {MIN_KEY}..{MAX_KEY} "
                          "(make one with: head -c 32 /dev/urandom > KEYFILE)")
    return data


def content_mac(meta: Mapping[str, Any], sections: Mapping[str, bytes], key: bytes) -> str:
    """HMAC-SHA256 (hex) of a container's content, the ``signature`` field excluded."""
    mac = hmac.new(key, _TAG, hashlib.sha256)
    body = {k: v for k, v in meta.items() if k != "signature"}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    mac.update(struct.pack("<Q", len(text)))
    mac.update(text)
    for name, payload in sections.items():
        raw = name.encode("utf-8")
        mac.update(struct.pack("<QQ", len(raw), len(payload)))
        mac.update(raw)
        mac.update(payload)
    return mac.hexdigest()


def sign_container(container: Container, key: KeyLike) -> bytes:
    """The container's bytes with a signature over its content (replacing any earlier one)."""
    secret = read_key(key)
    meta = {k: v for k, v in container.meta.items() if k != "signature"}
    meta["signature"] = {"alg": ALG, "mac": content_mac(meta, container.sections, secret)}
    return pack_container(meta, container.sections)


def verify_container(container: Container, key: KeyLike, source: str = "<bytes>") -> None:
    """Raise ``FormatError`` unless ``container`` carries a valid signature under ``key``."""
    secret = read_key(key)
    sig = container.meta.get("signature")
    if sig is None:
        raise FormatError(f"{source}: the file is not signed, and a verify key was given")
    if not isinstance(sig, dict) or set(sig) != {"alg", "mac"} or sig["alg"] != ALG \
            or type(sig["mac"]) is not str or len(sig["mac"]) != 64:
        raise FormatError(f"{source}: signature field {str(sig)[:80]} is not "
                          f"{{'alg': {ALG!r}, 'mac': <64 hex digits>}}")
    expected = content_mac(container.meta, container.sections, secret)
    if not hmac.compare_digest(expected, sig["mac"]):
        raise FormatError(f"{source}: signature does not match: the file changed after it was "
                          "signed, or it was signed with another key")


def sign_file(path: str | Path, key: KeyLike, out: str | Path | None = None) -> Path:
    """Sign the ``.nnc`` file ``path`` (in place, or into ``out``); returns the path written.
    The file is fully verified (checksums and header) first.

    Example:
        >>> import tempfile; from pathlib import Path
        >>> import nncompress
        >>> from nncompress.models import build_model
        >>> path = Path(tempfile.mkdtemp()) / "model.nnc"
        >>> _ = nncompress.save(build_model("lenet300"), path)
        >>> sign_file(path, b"k" * 32) == path
        True
        >>> nncompress.load(path, verify_key=b"x" * 32)
        Traceback (most recent call last):
        ...
        nncompress.errors.FormatError: ...the file changed after it was signed, or it was signed with another key
    """
    from nncompress.train.checkpoint import atomic_write_bytes

    path = Path(path)
    secret = read_key(key)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    blob = sign_container(unpack_container(path.read_bytes(), str(path)), secret)
    target = Path(out) if out is not None else path
    atomic_write_bytes(target, blob)
    return target
