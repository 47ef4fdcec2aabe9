"""A local helper module for ``ambient.ipynb``: importable only with ``lib/`` on ``sys.path``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Celsius:
    degrees: float

    def to_fahrenheit(self) -> float:
        return self.degrees * 9 / 5 + 32


def shout(text: str) -> str:
    return text.upper() + "!"
