"""Counting rules v1 vs v2 (and v2 with an alias file): how many names each outlet's counts split one thing into.

Runs the NER-only pipeline once over the first N articles of data/news.jsonl and keys the same spans three
ways: v1 (`" ".join(text.split()).lower()`), v2 (core/naming.py), and v2 with an alias file. Per outlet:
distinct entities, and the duplicate pairs among its top 100 entities by mentions — two keys a reader takes
for one thing, of the kinds issue 27 lists: the same name but for a possessive, a leading "the", quotes or
punctuation at the edges (`the white house` / `white house's`), or a surname alone beside the one full name
of the top 100 that ends with it (`trump` / `donald trump`). Also times NER and the rules apart: the rules
run after NER in the worker, so their share of the time is what v2 costs.

    .venv/bin/python benchmarks/quality.py                       # 1,200 articles, examples/aliases.csv
    .venv/bin/python benchmarks/quality.py --limit 300 --aliases my.csv --out /tmp/q.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest.backend.nlp import load_ner  # noqa: E402
from ingest.core.naming import PERSON, Aliases, article_mentions, majority_label, text_key  # noqa: E402
from ingest.core.rules import SKIPPED_LABELS, entity_key, publication_key  # noqa: E402

TOP = 100


def v1_mentions(spans) -> list[tuple[str, str]]:
    return [(key, s.label_) for s in spans if s.label_ not in SKIPPED_LABELS for key in [entity_key(s.text)] if key]


def duplicate_pairs(top: list[str], labels: dict[str, str]) -> list[tuple[str, str]]:
    """Pairs of the top list that name one thing: equal once possessives, "the" and edge punctuation are
    gone, or a one-word name and the one multi-word PERSON of the list that ends with it (`labels`: each
    key's majority label; `trump` is a pair with `donald trump` whatever spaCy called it, `africa` /
    `south africa` is none)."""
    bare = {key: text_key(key) for key in top}
    pairs = set()
    by_bare = collections.defaultdict(list)
    for key, b in bare.items():
        by_bare[b].append(key)
    for keys in by_bare.values():
        keys = sorted(keys)
        pairs.update((a, b) for i, a in enumerate(keys) for b in keys[i + 1:])
    people = [k for k in top if labels[k] == PERSON]
    for key in top:
        b = bare[key]
        if " " in b:
            continue
        owners = {bare[k] for k in people if " " in bare[k] and bare[k].endswith(" " + b)}
        if len(owners) == 1:
            [owner] = owners
            pairs.update(tuple(sorted((key, k))) for k in people if bare[k] == owner)
    return sorted(pairs)


def outlet_figures(articles: list[list[tuple[str, str]]]) -> dict:
    mentions = collections.Counter(key for article in articles for key, _ in article)
    per_label = collections.defaultdict(collections.Counter)
    for article in articles:
        for key, label in article:
            per_label[key][label] += 1
    top = [k for k, _ in sorted(mentions.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]]
    pairs = duplicate_pairs(top, {k: majority_label(per_label[k]) for k in top})
    return {"distinct": len(mentions), "pairs": len(pairs), "examples": [list(p) for p in pairs]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "news.jsonl"))
    ap.add_argument("--limit", type=int, default=1200)
    ap.add_argument("--aliases", default=str(ROOT / "examples" / "aliases.csv"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results-quality.json"))
    args = ap.parse_args(argv)

    posts = []
    with open(args.data, encoding="utf-8") as fh:
        for line in fh:
            if len(posts) >= args.limit:
                break
            item = json.loads(line)
            posts.append((item["publication"], item["content"]))
    aliases = Aliases.load(args.aliases)
    nlp = load_ner()

    started = time.perf_counter()
    docs = list(nlp.pipe([c for _, c in posts], batch_size=16))
    ner_seconds = time.perf_counter() - started
    started = time.perf_counter()
    v2 = [article_mentions(d.ents) for d in docs]
    rules_seconds = time.perf_counter() - started
    v2a = [article_mentions(d.ents, aliases) for d in docs]
    v1 = [v1_mentions(d.ents) for d in docs]

    outlets = collections.defaultdict(list)
    for i, (publication, _) in enumerate(posts):
        outlets[publication_key(publication)].append(i)
    table = {}
    for outlet, idx in sorted(outlets.items()):
        table[outlet] = {"articles": len(idx),
                         **{name: outlet_figures([rules[i] for i in idx])
                            for name, rules in (("v1", v1), ("v2", v2), ("v2+aliases", v2a))}}
    totals = {name: {"distinct": sum(t[name]["distinct"] for t in table.values()),
                     "pairs": sum(t[name]["pairs"] for t in table.values())} for name in ("v1", "v2", "v2+aliases")}

    print(f"{len(posts)} articles of {args.data}; aliases: {args.aliases} ({len(aliases.pairs)} pairs)")
    print(f"{'outlet':<18}{'articles':>9} | {'distinct v1':>11}{'v2':>7}{'Δ':>7}{'+aliases':>9} | "
          f"{'top-100 pairs v1':>16}{'v2':>5}{'+aliases':>9}")
    for outlet, t in table.items():
        d1, d2, d3 = (t[n]["distinct"] for n in ("v1", "v2", "v2+aliases"))
        p1, p2, p3 = (t[n]["pairs"] for n in ("v1", "v2", "v2+aliases"))
        print(f"{outlet[:17]:<18}{t['articles']:>9} | {d1:>11}{d2:>7}{(d2 - d1) / d1:>+7.1%}{d3:>9} | "
              f"{p1:>16}{p2:>5}{p3:>9}")
    d1, d2, d3 = (totals[n]["distinct"] for n in ("v1", "v2", "v2+aliases"))
    p1, p2, p3 = (totals[n]["pairs"] for n in ("v1", "v2", "v2+aliases"))
    print(f"{'all outlets':<18}{len(posts):>9} | {d1:>11}{d2:>7}{(d2 - d1) / d1:>+7.1%}{d3:>9} | "
          f"{p1:>16}{p2:>5}{p3:>9}")
    share = rules_seconds / (ner_seconds + rules_seconds)
    print(f"time: NER {ner_seconds:.1f} s, v2 rules {rules_seconds * 1000:.0f} ms ({share:.2%} of NER + rules; "
          f"NER speed with the rules: {1 - share:.3f} of NER alone)")

    result = {"data": args.data, "articles": len(posts), "aliases": args.aliases, "alias_pairs": len(aliases.pairs),
              "alias_digest": aliases.digest, "top": TOP, "outlets": table, "totals": totals,
              "ner_seconds": round(ner_seconds, 2), "rules_seconds": round(rules_seconds, 4),
              "speed_with_rules_over_ner_alone": round(1 - share, 4)}
    Path(args.out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
