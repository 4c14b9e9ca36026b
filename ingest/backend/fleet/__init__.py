"""A backend of a fleet (`ingestiond --intake pubsub://PROJECT/SUBSCRIPTION`), fed by Google Pub/Sub.

The design (docs/pubsub.md): a Pub/Sub message is the articles of one accepted request, with a
group id. The group id becomes the id of the store batch that counts those articles, so the
store's batch marker — created in the same commit as the counts — is what makes a redelivered
message count once, whichever backend gets it and whenever. A message is acknowledged only after
that commit; until then its lease is extended. The arbiter, the hub and the workers are the one
machine's; what differs is chosen here, once (`build`), by job:

- scratch.py: the journal is a scratch file (no fsync, emptied at every start) that keeps the
  article text on disk rather than in memory; Pub/Sub is the durable intake.
- puller.py: PubSubIntake pulls, bounds what is held, extends leases, acknowledges after the
  commit, hands back what is not committed, dead-letters.
- batching.py: GroupBatcher, the hub's batcher: each post's publication is tagged with its group,
  so a worker's aggregates never mix two messages; a saver's batch merges the complete groups
  (one marker each, in one commit).
"""

from __future__ import annotations

from ..hub import Hub
from .batching import GroupBatcher, PubSubLedger
from .puller import PubSubIntake
from .scratch import scratch_journal


def build(settings, on_put):
    """(journal, intake, hub) of a Pub/Sub backend."""
    journal = scratch_journal(settings)
    intake = PubSubIntake(journal, settings, on_put=on_put)
    hub = Hub(intake, settings, ledger=PubSubLedger(journal, intake), batcher=GroupBatcher(intake))
    return journal, intake, hub
