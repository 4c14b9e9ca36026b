"""The messages between the arbiter and its children, kept as plain tuples (cheap to pickle).

Strict request/response: the arbiter sends to a child only when the child is idle, and a child
sends only in answer to the arbiter (plus one hello). Neither side can then block the other on a
full pipe, and a dying child can break only its own pipe.
"""

from __future__ import annotations

from collections import Counter

from .models import Delta, ProcessedPost

# arbiter -> worker
POSTS = "posts"      # (POSTS, [(publication, content), ...])
FLUSH = "flush"      # (FLUSH,)
STOP = "stop"        # (STOP,)  flush, answer, exit
# arbiter -> saver
BATCH = "batch"      # (BATCH, delta_wire)
# child -> arbiter
READY = "ready"      # (READY, pid)
BOOT_ERROR = "boot_error"  # (BOOT_ERROR, message)
DONE = "done"        # worker: (DONE, flushed_aggregates_or_None)
SAVED = "saved"      # saver: (SAVED, batch_id, writes, commits)
FAILED = "failed"    # saver: (FAILED, batch_id, reason)

EXIT_BOOT_ERROR = 3


def post_to_wire(post: ProcessedPost) -> tuple:
    return (post.key, post.name, post.articles, dict(post.mentions), dict(post.entity_articles))


def post_from_wire(item: tuple) -> ProcessedPost:
    key, name, articles, mentions, entity_articles = item
    return ProcessedPost.model_construct(
        key=key, name=name, articles=articles, mentions=Counter(mentions), entity_articles=Counter(entity_articles)
    )


def delta_to_wire(delta: Delta) -> tuple:
    return (delta.batch_id, [post_to_wire(p) for p in delta.publications.values()])


def delta_from_wire(item: tuple) -> Delta:
    batch_id, posts = item
    return Delta.model_construct(batch_id=batch_id, publications={p[0]: post_from_wire(p) for p in posts})
