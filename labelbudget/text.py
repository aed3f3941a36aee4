"""The one text normaliser shared by references, hypotheses, vocabulary and validation."""

from __future__ import annotations

import re
import unicodedata

# Character vocabulary of the CTC model; index 0 is the CTC blank.
BLANK = "<b>"
CHARS = list(" 'abcdefghijklmnopqrstuvwxyz")
VOCAB = [BLANK, *CHARS]
CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB)}

_ALLOWED = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def normalize(text: str) -> str:
    """Lower-case, strip accents, map hyphens to spaces, drop other punctuation, squeeze spaces."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = text.replace("-", " ").replace("\u2019", "'")
    text = _ALLOWED.sub("", text)
    return _SPACES.sub(" ", text).strip()


def illegal_chars(text: str) -> set[str]:
    """Characters of the lower-cased transcript that the normaliser would silently drop."""
    lowered = text.lower().replace("-", " ").replace("\u2019", "'")
    return {c for c in lowered if c not in CHAR_TO_ID and not c.isspace() and c not in ".,;:!?\"()"}


def encode(text: str) -> list[int]:
    return [CHAR_TO_ID[c] for c in normalize(text)]


def decode(ids: list[int]) -> str:
    return "".join(VOCAB[i] for i in ids if i != 0)
