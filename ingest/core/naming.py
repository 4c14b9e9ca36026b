"""Counting rules v2: one name per thing (CONTRACT.md, "Counting rules v2").

spaCy's spans carry what a name is not: a possessive (`Donald Trump's`), a leading article (`the
White House`), quotes and punctuation at the edges (`"Barack Obama'`). v1 keyed the span's text as
it stood, so one person was counted under several keys. Here each mention of one article becomes
(key, label): rules 1-3 per span, rule 4 (a surname alone counts as the one full name of the
article that ends with it) per article, rule 5 (an operator's aliases) last. Pure functions over
span-like objects (`.label_`, tokens with `.text` and `.whitespace_`): no spaCy import, so the
recount of the tests and the workers share them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .rules import SKIPPED_LABELS

RULES_VERSION = 2
POSSESSIVE_TOKENS = frozenset({"'s", "’s", "'", "’"})
EDGE_CHARS = "\"'“”‘’«»()[]{}<>-–—,;:!?*"
PERSON = "PERSON"
# The labels an entity can carry: en_core_web_sm's (OntoNotes) named-entity labels, less the skipped ones.
LABELS = ("EVENT", "FAC", "GPE", "LANGUAGE", "LAW", "LOC", "NORP", "ORG", "PERSON", "PRODUCT", "WORK_OF_ART")


def strip_edges(text: str) -> str:
    """Rule 2's edges: quotes, brackets, dashes and punctuation, and whitespace, until none is left."""
    previous = None
    while previous != text:
        previous, text = text, text.strip().strip(EDGE_CHARS)
    return text


def fold(text: str) -> str:
    return " ".join(text.split()).lower()


def span_key(tokens: Iterable) -> str:
    """Rules 1-3 on one span's tokens: no trailing possessive, no leading "the" (while a token
    remains), NFKC, edges stripped, whitespace folded, lower case. "" when nothing is left."""
    toks = list(tokens)
    while len(toks) > 1 and toks[-1].text in POSSESSIVE_TOKENS:
        toks.pop()
    if len(toks) > 1 and toks[0].text.lower() == "the":
        toks = toks[1:]
    text = "".join(t.text + t.whitespace_ for t in toks)
    return fold(strip_edges(unicodedata.normalize("NFKC", text)))


def text_key(text: str) -> str:
    """Rules 1-3 on plain text (an alias file's names): as `span_key` with words for tokens and a
    possessive suffix of the last word dropped."""
    words = strip_edges(unicodedata.normalize("NFKC", text)).split()
    while len(words) > 1 and words[-1] in POSSESSIVE_TOKENS:
        words.pop()
    if words:
        for suffix in ("'s", "’s"):
            if words[-1].lower().endswith(suffix) and len(words[-1]) > len(suffix):
                words[-1] = words[-1][:-len(suffix)]
                break
    if len(words) > 1 and words[0].lower() == "the":
        words = words[1:]
    return fold(strip_edges(" ".join(words)))


def article_mentions(spans: Iterable, aliases: "Aliases | None" = None) -> list[tuple[str, str]]:
    """(key, label) for each counted mention of one article, in order (rules 1-6)."""
    raw = []
    for span in spans:
        if span.label_ in SKIPPED_LABELS:
            continue
        key = span_key(span)
        if key:
            raw.append((key, span.label_))
    full_names = {key for key, label in raw if label == PERSON and " " in key}
    out = []
    for key, label in raw:
        if label == PERSON and " " not in key:
            owners = [name for name in full_names if name.endswith(" " + key)]
            if len(owners) == 1:
                key = owners[0]
        if aliases is not None:
            key = aliases.canonical(key)
        out.append((key, label))
    return out


def majority_label(labels: dict[str, int]) -> str:
    """The label with most mentions; ties go to the alphabetically first."""
    return min(labels.items(), key=lambda item: (-item[1], item[0]))[0] if labels else ""


class AliasError(ValueError):
    """An alias file that cannot be used: one line saying where and why."""


@dataclass(frozen=True)
class Aliases:
    """`alias,canonical` pairs, both keyed by rules 1-3; applied once (no chains)."""

    pairs: dict = field(default_factory=dict)

    def canonical(self, key: str) -> str:
        return self.pairs.get(key, key)

    @property
    def digest(self) -> str:
        """What a store records with the rules version: the same pairs give the same digest."""
        if not self.pairs:
            return ""
        text = "\n".join(f"{a}\t{c}" for a, c in sorted(self.pairs.items()))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    @classmethod
    def parse(cls, text: str, where: str = "aliases") -> "Aliases":
        pairs: dict[str, str] = {}
        for n, row in enumerate(csv.reader(io.StringIO(text)), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 2:
                raise AliasError(f"{where}:{n}: expected 'alias,canonical', got {len(row)} fields")
            alias, canonical = text_key(row[0]), text_key(row[1])
            if not alias or not canonical:
                raise AliasError(f"{where}:{n}: an empty name")
            if n == 1 and (alias, canonical) == ("alias", "canonical"):
                continue  # a header line
            if pairs.get(alias, canonical) != canonical:
                raise AliasError(f"{where}:{n}: {alias!r} is already an alias of {pairs[alias]!r}")
            if alias != canonical:
                pairs[alias] = canonical
        return cls(pairs)

    @classmethod
    def load(cls, path: str | Path | None) -> "Aliases":
        if not path:
            return cls()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AliasError(f"{path}: cannot read the alias file: {exc}") from None
        return cls.parse(text, str(path))


def rules_record(aliases: Aliases) -> str:
    """The rules a store's counts were made with: compared at boot, refused when different."""
    return f"v{RULES_VERSION}" + (f"+aliases:{aliases.digest}" if aliases.pairs else "")
