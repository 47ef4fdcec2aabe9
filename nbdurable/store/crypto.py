"""Optional encryption at rest: AES-256-GCM (the ``cryptography`` library) under a key from the environment.

Set ``NBDURABLE_ENCRYPTION_KEY`` (32 bytes as 64 hex digits or base64) or ``NBDURABLE_ENCRYPTION_KEY_FILE``
(a file holding such a key) in every process that uses the store — kernels, ``nbdurable`` commands,
workers. Then:

- every journal line's JSON is encrypted (``E1:`` + base64 of nonce and ciphertext), before its
  authentication tag is computed, so events are encrypted too;
- every object file is encrypted (``NBDE`` + ciphertext + GCM tag). Its nonce is derived from the
  object's content key, so the same content gives the same file (content addressing keeps working)
  and no nonce is ever used for two different contents. Encrypted objects are read into memory, not
  mapped lazily;
- the DuckDB catalog is kept in memory only (rebuilt from the journals by each query), never written.

What stays visible: file names (run ids, content keys), sizes, and the number and timing of records.
A store written without the key stays readable with it (plain lines and objects are recognized).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..errors import StoreError

if TYPE_CHECKING:
    from typing_extensions import Buffer

LINE_MARK = b"E1:"
OBJECT_MAGIC = b"NBDE"
NONCE_BYTES = 12
GCM_TAG_BYTES = 16
_cached: dict[tuple[str | None, str | None], bytes | None] = {}


def encryption_key() -> bytes | None:
    """The encryption key from the environment, or None (the store is not encrypted)."""
    where = (os.environ.get("NBDURABLE_ENCRYPTION_KEY"), os.environ.get("NBDURABLE_ENCRYPTION_KEY_FILE"))
    if where not in _cached:
        _cached[where] = _read_key(*where)
    return _cached[where]


def _read_key(value: str | None, file: str | None) -> bytes | None:
    source = "NBDURABLE_ENCRYPTION_KEY"
    if value is None and file:
        source = f"the key file {file}"
        try:
            value = Path(file).expanduser().read_text().strip()
        except OSError as exc:
            raise StoreError(f"cannot read {source}: {exc.strerror}",
                             hint="check NBDURABLE_ENCRYPTION_KEY_FILE") from exc
    if not value:
        return None
    value = value.strip()
    try:
        key = bytes.fromhex(value) if len(value) == 64 else base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        key = b""
    if len(key) != 32:
        raise StoreError(f"{source} is not a 32-byte key (64 hex digits or base64)",
                         hint='make one with: python -c "import secrets; print(secrets.token_hex(32))"')
    return key


def _cryptography() -> Any:
    """The ``cryptography`` package (an optional dependency: ``pip install 'nbdurable[encryption]'``)."""
    try:
        import cryptography.exceptions
        import cryptography.hazmat.primitives.ciphers
        import cryptography.hazmat.primitives.ciphers.aead
    except ImportError:
        raise StoreError("encryption at rest needs the cryptography package, which is not installed",
                         hint="pip install 'nbdurable[encryption]' (or unset NBDURABLE_ENCRYPTION_KEY)") from None
    return cryptography


def _aes(key: bytes) -> Any:
    return _cryptography().hazmat.primitives.ciphers.aead.AESGCM(key)


def seal_line(body: bytes) -> bytes:
    """A journal line's JSON, encrypted if a key is set."""
    key = encryption_key()
    if key is None:
        return body
    nonce = secrets.token_bytes(NONCE_BYTES)
    return LINE_MARK + base64.b64encode(nonce + _aes(key).encrypt(nonce, body, None))


def open_line(body: bytes) -> bytes:
    """A journal line's JSON, decrypted if it was encrypted (StoreError without the right key)."""
    if not body.startswith(LINE_MARK):
        return body
    sealed = base64.b64decode(body[len(LINE_MARK):])
    return bytes(_open(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], "a journal record"))


def _open(nonce: bytes, ciphertext: Buffer, what: str) -> bytes:
    invalid_tag = _cryptography().exceptions.InvalidTag
    key = encryption_key()
    if key is None:
        raise StoreError(f"{what} is encrypted and no key is set",
                         hint="set NBDURABLE_ENCRYPTION_KEY (or NBDURABLE_ENCRYPTION_KEY_FILE) to the store's key")
    try:
        return bytes(_aes(key).decrypt(nonce, bytes(ciphertext), None))
    except invalid_tag:
        raise StoreError(f"{what} cannot be decrypted with this NBDURABLE_ENCRYPTION_KEY",
                         hint="set the key the store was written with") from None


class EncryptingFile:
    """Wraps an object file: what is written is encrypted on the way (streaming AES-GCM)."""

    def __init__(self, raw: BinaryIO, key: bytes, content_key: str) -> None:
        ciphers = _cryptography().hazmat.primitives.ciphers
        # Same content, same nonce: the file is a function of the content (dedup keeps working), and a
        # nonce never serves two contents. Derived with the key, so it reveals nothing.
        nonce = hmac.new(key, b"nonce:" + content_key.encode(), hashlib.sha256).digest()[:NONCE_BYTES]
        self._raw = raw
        self._encryptor = ciphers.Cipher(ciphers.algorithms.AES(key), ciphers.modes.GCM(nonce)).encryptor()
        raw.write(OBJECT_MAGIC + nonce)

    def write(self, data: Buffer) -> int:
        with memoryview(data) as view:
            self._raw.write(self._encryptor.update(view))
            return view.nbytes

    def finish(self) -> None:
        self._raw.write(self._encryptor.finalize() + self._encryptor.tag)


def open_object(data: bytearray | memoryview, what: str) -> bytearray | memoryview:
    """An object file's content, decrypted if it was encrypted."""
    if bytes(data[: len(OBJECT_MAGIC)]) != OBJECT_MAGIC:
        return data
    start = len(OBJECT_MAGIC)
    nonce = bytes(data[start : start + NONCE_BYTES])
    body = memoryview(data)[start + NONCE_BYTES :]
    # AESGCM.decrypt takes the tag after the ciphertext, which is how the file ends.
    return bytearray(_open(nonce, body, what))
