"""deploy/fleet.sh under the fake gcloud (tests/fakebin): the topic, subscription and dead-letter
topic (a policy of 100 attempts, a subscription that keeps its messages), the instance template,
the regional group autoscaled on the backlog, the load balancer;
--dry-run runs nothing; bad arguments are refused before any call; no secret on a command line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # shell scripts under the fake gcloud

REPO = Path(__file__).resolve().parents[1]
FAKEBIN = REPO / "tests" / "fakebin"
ARGS = ("--project", "ingest-test-123", "--region", "europe-west1", "--wheel-url", "gs://ingest-dist/ingestiond.whl",
        "--api-keys-secret", "ingest-keys")


def fleet(tmp: Path, *args: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INGEST_", "FAKE_"))}
    env.update(PATH=f"{FAKEBIN}{os.pathsep}{os.environ['PATH']}", FAKE_LOG=str(tmp / "fake.log"),
               FAKE_STDOUT="123456789012")
    return subprocess.run(["bash", str(REPO / "deploy" / "fleet.sh"), *args], capture_output=True, text=True,
                          env=env, timeout=60, stdin=subprocess.DEVNULL, start_new_session=True)


def calls(tmp: Path) -> list[list[str]]:
    log = tmp / "fake.log"
    return [json.loads(line)["args"] for line in log.read_text().splitlines()] if log.exists() else []


def test_create_makes_pubsub_then_the_group_then_the_balancer(tmp_path):
    result = fleet(tmp_path, "create", *ARGS, "--min", "2", "--max", "8", "--backlog-per-vm", "3000")
    assert result.returncode == 0, result.stderr
    made = [" ".join(c) for c in calls(tmp_path)]
    order = ["pubsub topics create ingest ", "pubsub topics create ingest-dead", "subscriptions create ingest-backends",
             "instance-templates create", "instance-groups managed create", "set-autoscaling",
             "backend-services create", "forwarding-rules create"]
    positions = [next(i for i, c in enumerate(made) if key in c) for key in order]
    assert positions == sorted(positions), made
    sub = next(c for c in made if "subscriptions create ingest-backends" in c)
    # the policy only for what kills backends: a healthy message handed back by draining VMs is never dead-lettered
    assert "--dead-letter-topic=ingest-dead" in sub and "--max-delivery-attempts=100" in sub
    assert "--ack-deadline=60" in sub
    keep = next(c for c in made if "subscriptions create ingest-dead-keep" in c)  # what `ingestiond dead-letters` reads
    assert "--topic=ingest-dead" in keep and "--message-retention-duration=7d" in keep
    assert "--expiration-period=never" in keep, "an unread dead-letter subscription must not expire after 31 days"
    assert made.index(keep) < made.index(sub), "the dead letters' keeper exists before anything can be dead-lettered"
    assert "ingestiond dead-letters list --intake 'pubsub://ingest-test-123/ingest-backends?dead_letter=ingest-dead'" \
        in result.stderr
    agent = "service-123456789012@gcp-sa-pubsub.iam.gserviceaccount.com"
    assert any(agent in c and "roles/pubsub.publisher" in c and "ingest-dead" in c for c in made)
    scaling = next(c for c in made if "set-autoscaling" in c)
    assert "--region=europe-west1" in scaling and "--min-num-replicas=2" in scaling \
        and "--max-num-replicas=8" in scaling
    assert "subscription/num_undelivered_messages" in scaling \
        and "--stackdriver-metric-single-instance-assignment=3000" in scaling
    assert 'resource.labels.subscription_id = "ingest-backends"' in scaling
    template = next(c for c in made if "instance-templates create" in c)
    assert "ingest-intake-topic=pubsub://ingest-test-123/ingest," in template
    assert "ingest-intake-subscription=pubsub://ingest-test-123/ingest-backends?dead_letter=ingest-dead" in template
    assert "startup-script=" in template and "fleet-startup.sh" in template
    assert "ingest-api-keys-secret=ingest-keys" in template  # the secret's name travels, never a key


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    result = fleet(tmp_path, *ARGS, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert calls(tmp_path) == []
    lines = result.stdout.splitlines()
    assert len(lines) == 17 and all(line.startswith("gcloud ") for line in lines)
    assert "dry run: nothing was done" in result.stderr


def test_teardown_deletes_the_group_and_balancer_and_keeps_the_data(tmp_path):
    result = fleet(tmp_path, "teardown", "--project", "ingest-test-123", "--region", "europe-west1")
    assert result.returncode == 0, result.stderr
    made = [" ".join(c) for c in calls(tmp_path)]
    assert all(" delete " in f" {c} " for c in made) and any("instance-groups managed delete" in c for c in made)
    assert not any("pubsub" in c for c in made), "the topic and subscription (and their backlog) stay"


@pytest.mark.parametrize("bad, words", [
    (("--region", "europe-west1-b"), "--region"),
    (("--wheel-url", "https://x/y.whl"), "--wheel-url"),
    (("--min", "5", "--max", "2"), "--min/--max"),
    (("--name", "Bad_Name"), "--name"),
    (("--layout", "wide"), "--layout"),
    (("--frobnicate",), "--frobnicate"),
])
def test_bad_arguments_are_refused_before_any_call(tmp_path, bad, words):
    result = fleet(tmp_path, *ARGS, *bad)
    assert result.returncode == 2 and "Usage:" in result.stderr and words in result.stderr, result.stderr
    assert calls(tmp_path) == []


def test_the_startup_script_has_help_and_no_options():
    run = lambda *a: subprocess.run(["bash", str(REPO / "deploy" / "fleet-startup.sh"), *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=30)
    assert run("--help").stdout.startswith("Usage: ")
    assert run("--bogus").returncode == 2
