"""Authentication of everything nbdurable reads back: HMAC-SHA256 under a per-user key.

Loading a pickle runs code, so nothing that someone else wrote into a store may be loaded. Every journal
line ends with the HMAC-SHA256 of its JSON (in place of a plain checksum: it detects torn writes just as
well); every object file's HMAC-SHA256 is kept in the authenticated record that refers to it, and a
reader verifies before it parses (``Store.read_object(key, tag=...)``).

The key is 32 random bytes in ``$NBDURABLE_KEY_FILE``, else ``$XDG_CONFIG_HOME/nbdurable/key`` (default
``~/.config/nbdurable/key``), created on first use with mode 0600 in a 0700 directory. A key file that
others can read or write is refused. A store is readable by whoever holds its key: to share a store
between users or machines, share the key file and point ``NBDURABLE_KEY_FILE`` at it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AuthenticationError

if TYPE_CHECKING:
    from typing_extensions import Buffer

KEY_BYTES = 32
TAG_HEX_LEN = 64  # hex characters of an HMAC-SHA256 tag
_lock = threading.Lock()
_cached: dict[tuple[str | None, str | None], bytes] = {}
_keyed: dict[bytes, hmac.HMAC] = {}  # a keyed HMAC-SHA256 object per key, copied for each line


def key_path() -> Path:
    """Where this user's key lives (see the module docstring)."""
    explicit = os.environ.get("NBDURABLE_KEY_FILE")
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "nbdurable" / "key"


def user_key() -> bytes:
    """The key, created on first use; AuthenticationError if it is unreadable, damaged or not private.
    Cached per key location (every journal line asks: the lookup must cost nothing)."""
    where = (os.environ.get("NBDURABLE_KEY_FILE"), os.environ.get("XDG_CONFIG_HOME"))
    key = _cached.get(where)
    if key is None:
        with _lock:
            key = _cached.get(where) or _load_or_create(key_path())
            _cached[where] = key
    return key


def _load_or_create(path: Path) -> bytes:
    if not path.exists():
        _create(path)
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise AuthenticationError(f"cannot read the nbdurable key file {path}: {exc.strerror}",
                                  hint="check its permissions, or set NBDURABLE_KEY_FILE to a readable "
                                       "key file") from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise AuthenticationError(
            f"the nbdurable key file {path} is accessible to other users (mode {stat.S_IMODE(info.st_mode):o})",
            hint=f"make it private: chmod 600 {path}",
        )
    if len(data) != KEY_BYTES:
        raise AuthenticationError(
            f"the nbdurable key file {path} is damaged ({len(data)} bytes, not {KEY_BYTES})",
            hint="restore it from a backup; without it the stores it wrote cannot be read (move it away to start anew)",
        )
    return data


def _create(path: Path) -> None:
    """Write a new key atomically: a concurrent creator's key wins if it was first (both read the same)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key meanwhile: keep theirs
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _new_mac() -> hmac.HMAC:
    """A fresh HMAC-SHA256 under the user's key: a copy of one keyed object, not ``hmac.new`` or the
    one-shot ``hmac.digest``, which look the digest up in OpenSSL on every call (~0.5 ms per journal line
    in a kernel, against ~2 µs for a copy)."""
    key = user_key()
    base = _keyed.get(key)
    if base is None:
        base = _keyed[key] = hmac.new(key, digestmod=hashlib.sha256)
    return base.copy()


def line_tag(body: bytes) -> bytes:
    """The hex HMAC-SHA256 of a journal line's JSON bytes."""
    mac = _new_mac()
    mac.update(body)
    return mac.hexdigest().encode("ascii")


def line_tag_matches(body: bytes, tag: bytes) -> bool:
    """Whether ``tag`` authenticates ``body`` (constant-time comparison)."""
    return hmac.compare_digest(line_tag(body), tag)


class Tagger:
    """An HMAC-SHA256 computed over data given piece by piece (an object file as it is written)."""

    def __init__(self) -> None:
        self._mac = _new_mac()

    def update(self, data: Buffer) -> None:
        self._mac.update(data)

    def hexdigest(self) -> str:
        return self._mac.hexdigest()


def object_tag(data: Buffer) -> str:
    """The hex HMAC-SHA256 of a whole object's bytes."""
    tagger = Tagger()
    tagger.update(data)
    return tagger.hexdigest()
