"""/readyz's verdict and detail from the backend's status alone: an in-process app with a fake client."""

from __future__ import annotations

from ingest.config import FrontendSettings
from ingest.web.app import create_app

BASE = {"state": "accepting", "depth": 0, "capacity": 524288, "accepted": 5, "duplicates": 0, "processed": 5,
        "in_flight": 0, "unsaved": 0, "quarantined": 0, "journal_articles": 0, "journal_bytes": 0,
        "journal_capacity_bytes": 1024**3, "journal_room_bytes": 1024**3, "journal_room_articles": 524288,
        "stuck_batches": 0, "store_healthy": True, "quarantine_full": False}


class FakeClient:
    def __init__(self, **over):
        self.state = {**BASE, **over}

    def status(self):
        return dict(self.state)

    def close(self):
        pass


def readyz(**over):
    app = create_app(FrontendSettings(api_keys=("k" * 32,)), client=FakeClient(**over), store=object())
    return app.test_client().get("/readyz")


def test_readyz_says_how_much_room_is_left_and_a_full_quarantine_is_not_ready():
    ok = readyz()
    assert ok.status_code == 200
    assert ok.json["journal_room_bytes"] == 1024**3 and ok.json["journal_room_articles"] == 524288
    full = readyz(quarantined=1000, quarantine_full=True)
    assert full.status_code == 503 and full.json["error"] == "quarantine_full" and full.json["quarantined"] == 1000
    stuck = readyz(store_healthy=False, stuck_batches=1, store_failing_seconds=99.0)
    assert stuck.status_code == 503 and stuck.json["error"] == "store_unavailable" and stuck.json["stuck_batches"] == 1
