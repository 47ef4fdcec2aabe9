"""Store maintenance commands: ``check`` and ``gc`` (being built)."""

from __future__ import annotations
