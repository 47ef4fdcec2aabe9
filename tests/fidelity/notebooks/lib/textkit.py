"""A tiny, deterministic stand-in for an LLM client, used by ``text_batches.ipynb``.

It "summarizes" and "classifies" reviews with a word lexicon, so the notebook runs offline and its
outputs are reproducible. Objects of this module are kept in the notebook's variables (the model, the
results): restoring them needs this module importable, that is ``lib/`` on ``sys.path``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("textkit")

POSITIVE = {"great", "love", "excellent", "fast", "perfect", "happy", "good", "sturdy", "recommend", "works"}
NEGATIVE = {"broke", "slow", "bad", "poor", "refund", "late", "cheap", "disappointed", "noisy", "leaks"}
STOP = {"the", "a", "an", "and", "it", "is", "was", "to", "of", "i", "my", "for", "this", "in", "on", "but", "after",
        "with", "me", "very", "so", "not", "at", "be", "its", "they", "are", "that", "as", "one"}


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens."""
    return re.findall(r"[a-z']+", text.lower())


@dataclass
class Result:
    review_id: int
    label: str
    score: float
    summary: str
    tokens: int


@dataclass
class LexiconModel:
    """A pretend language model: a name, a temperature that changes nothing, a usage meter."""

    name: str
    temperature: float = 0.0
    calls: int = 0
    tokens_in: int = 0
    vocabulary: Counter = field(default_factory=Counter)

    def complete(self, review_id: int, text: str) -> Result:
        words = tokenize(text)
        self.calls += 1
        self.tokens_in += len(words)
        self.vocabulary.update(w for w in words if w not in STOP)
        pos = sum(w in POSITIVE for w in words)
        neg = sum(w in NEGATIVE for w in words)
        score = (pos - neg) / max(1, pos + neg)
        label = "positive" if score > 0.2 else "negative" if score < -0.2 else "mixed"
        keywords = [w for w, _ in Counter(w for w in words if w not in STOP).most_common(3)]
        log.debug("review %d: %d tokens, score %.2f", review_id, len(words), score)
        return Result(review_id, label, round(score, 3), " / ".join(keywords), len(words))


def load_model(name: str, temperature: float = 0.0) -> LexiconModel:
    log.info("loading model %s", name)
    return LexiconModel(name, temperature)


def batches(items: list, size: int) -> list[list]:
    """``items`` cut into lists of ``size``."""
    return [items[i:i + size] for i in range(0, len(items), size)]
