"""ingest-load: POST a dataset to a running frontend, concurrently; wait until the backend has processed
what was accepted; report both. docs/load.md is the user's guide.

The parts, in the order a run uses them:
- `plan`: what a run is asked to do (`Run`) and the requests it makes of the dataset (`Work`, `plan`).
- `send`: one request to its fate (accepted, duplicate, rejected, lost, unknown), with the retry rules.
- `wait`: the backend's counters from GET /readyz, and the wait until it has processed what was accepted.
- `report`: the `Report` dataclass, built once at the end, its JSON form and its text form.
- `run`: the threads, the progress bars and Ctrl-C around the three steps.
- `cli`: arguments, the API key, exit status.
"""

from .cli import main

__all__ = ["main"]
