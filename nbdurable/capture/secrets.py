"""Which names hold secrets (never written to disk): a rule on the *words* of a name, not its letters.

A name is split into words on underscores and camel case (``apiKey`` → ``API_KEY``, ``GITHUB_TOKEN`` →
``GITHUB_TOKEN``, ``HTTPToken`` → ``HTTP_TOKEN``, ``_private_key`` → ``PRIVATE_KEY``), the words joined by
``_`` in upper case, and that normalized name is matched against shell-style patterns (``fnmatch``, case-
insensitive). The defaults name secret *words*:

- ``KEY`` as the last word of several (``API_KEY``, ``apiKey``, ``SECRET_KEY``; not ``key``, ``keyboard``,
  ``monkey``, ``key_size``);
- ``TOKEN``, ``SECRET``, ``PASSWORD``, ``PASSWD``, ``CREDENTIAL`` as a whole word anywhere except as the
  first of several (``TOKEN``, ``api_token``, ``GITHUB_TOKEN``, ``ACCESS_TOKEN_V2``, ``client_secret``,
  ``db_password``; not ``tokenizer``, ``Tokenizer``, ``tokens``, ``token_count``, ``secretary``), and
  ``SECRET`` / ``PASSWORD`` also as the first (``SECRET_KEY``, ``password_hash``).

Configured patterns (``c.Durable.secret_patterns``) use the same form; an old-style pattern such as
``*TOKEN*`` still works (it then matches any name containing the letters). ``%durable exclude`` and
``c.Durable.exclude`` name variables exactly.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from functools import lru_cache

DEFAULT_SECRET_PATTERNS = (
    "*_KEY",
    "TOKEN", "*_TOKEN", "*_TOKEN_*",
    "SECRET", "SECRET_*", "*_SECRET", "*_SECRET_*",
    "PASSWORD", "PASSWORD_*", "*_PASSWORD", "*_PASSWORD_*",
    "PASSWD", "*_PASSWD", "*_CREDENTIAL", "*_CREDENTIALS",
)

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@lru_cache(maxsize=4096)
def words(name: str) -> str:
    """A name's words, upper case, joined by ``_`` (``apiKey`` → ``API_KEY``)."""
    return "_".join(w.upper() for part in name.split("_") for w in _CAMEL.split(part) if w)


class SecretRules:
    """Names whose values are never written to disk: declared ones and patterns on the name's words."""

    def __init__(self, patterns: Iterable[str] = DEFAULT_SECRET_PATTERNS, excluded: Iterable[str] = ()) -> None:
        self.patterns = [p.upper() for p in patterns]
        self.excluded = set(excluded)
        self._rule = re.compile("|".join(fnmatch.translate(p) for p in self.patterns) or "(?!)")
        self._known: dict[str, bool] = {}  # name -> matches a pattern (names recur: every cell asks)

    def is_secret(self, name: str) -> bool:
        """True when the variable (or environment variable, or parameter) must not be stored."""
        if name in self.excluded:
            return True
        known = self._known.get(name)
        if known is None:
            if len(self._known) > 65536:
                self._known.clear()
            known = self._known[name] = self._rule.match(words(name)) is not None
        return known


_DEFAULT = SecretRules()


def default_is_secret(name: str) -> bool:
    """The default rule (module docstring), for code that has no extension's configured rules."""
    return _DEFAULT.is_secret(name)
