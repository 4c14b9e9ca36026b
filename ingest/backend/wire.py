"""The messages between the arbiter and its children: tuples whose payloads pickle as they are.

Strict request/response: the arbiter sends to a child only when the child is idle, and a child
sends only in answer to the arbiter (plus one hello). Neither side can then block the other on a
full pipe, and a dying child can break only its own pipe.
"""

# arbiter -> worker
POSTS = "posts"      # (POSTS, [(publication, content), ...])
FLUSH = "flush"      # (FLUSH,)
STOP = "stop"        # (STOP,)  worker: flush, answer, exit; saver: answer, exit
# arbiter -> saver
BATCH = "batch"      # (BATCH, Delta)
# child -> arbiter
READY = "ready"            # (READY, pid)
BOOT_ERROR = "boot_error"  # (BOOT_ERROR, message)
DONE = "done"              # worker: (DONE, [Aggregate, ...] or None)
SAVED = "saved"            # saver: (SAVED, batch_id, writes, commits)
FAILED = "failed"          # saver: (FAILED, batch_id, reason)
REFUSED = "refused"        # saver: (REFUSED, batch_id, [group ids recorded already], reason): a merged batch
                           # was not applied, nothing of it; send its groups one by one
FATAL = "fatal"            # saver: (FATAL, message): another live process holds our writer name; stop (exit 3)

