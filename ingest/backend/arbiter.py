"""The backend's main process: owns signals and children, like gunicorn's arbiter.

One pass of the loop: wait (children's pipes and sentinels, signals, new posts, a timeout) →
handle what arrived → dispatch → kill the unresponsive → top up the children → publish the
status snapshot. SIGTERM/SIGINT start an orderly drain: stop accepting → workers finish the queue
and flush → savers commit everything → exit 0. Every way out (drain, SIGQUIT, a boot error, a
bug in the loop) goes through `finish`. Routing state lives in Hub; this module only sequences.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.connection import wait

from . import wire
from .child import child_main
from .hub import Hub, SaverSlot, WorkerSlot
from .intake import Entry, Intake, serve
from .saver import Saver
from .worker import Worker

log = logging.getLogger("ingest.arbiter")

TICK = 0.25
WORKER_TIMEOUT = 300.0  # one request (a micro-batch of NER) may not take longer
MAX_BOOT_FAILURES = 3
EXIT_UNFINISHED = 1


class BootError(Exception):
    """A child cannot start: stop everything instead of respawning it in a tight loop."""


class Arbiter:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

    def __init__(self, settings, authkey: bytes):
        self.settings = settings
        self.authkey = authkey
        self.ctx = multiprocessing.get_context("spawn")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.intake = Intake(settings.queue_size, on_put=self.wake)
        self.hub = Hub(self.intake, settings)
        self.signals: list[int] = []
        self.draining = False
        self.drain_deadline = 0.0
        self.boot_failures = 0
        self.next_number = 0
        self.started = time.time()

    # -- plumbing --------------------------------------------------------------
    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake

    def install_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, lambda signum, frame: (self.signals.append(signum), self.wake()))

    def publish(self) -> None:
        snapshot = self.hub.snapshot()
        snapshot["uptime_seconds"] = round(time.time() - self.started, 1)
        self.intake.publish(snapshot)

    # -- run ---------------------------------------------------------------------
    def run(self) -> int:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by spawned workers
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.install_signals()
        self.publish()
        serve(self.intake, self.settings.manager_address, self.authkey)  # an address in use fails here
        self.replay_deadletter()
        code = EXIT_UNFINISHED
        try:
            self.spawn_missing()
            log.info("ingestiond started: workers=%d savers=%d store=%s queue=%d cache=%d flush=%.1fs",
                     self.settings.workers, self.settings.savers, _safe_store(self.settings.store_url),
                     self.settings.queue_size, self.settings.cache_size, self.settings.flush_interval)
            code = self.loop()
        except BootError as exc:
            log.critical("%s — stopping instead of respawning", exc)
            code = wire.EXIT_BOOT_ERROR
        except Exception:
            log.exception("the arbiter's loop failed; stopping")
        finally:
            code = self.finish(code)
        return code

    def loop(self) -> int:
        """Until the drain completes (0) or SIGQUIT (1)."""
        while True:
            self.wait_once()
            if self.handle_signals():
                return EXIT_UNFINISHED
            now = time.monotonic()
            self.hub.dispatch(now)
            self.kill_unresponsive(now)
            if self.draining and self.advance_drain(now):
                return 0
            self.spawn_missing()
            self.publish()

    def wait_once(self) -> None:
        handles = {self._wake_r: ("wake", None)}
        for role, slots in (("worker", self.hub.workers), ("saver", self.hub.savers)):
            for number, slot in slots.items():
                handles[slot.conn] = (role, number)
                handles[slot.process.sentinel] = (role + "-exit", number)
        ready = wait(list(handles), timeout=TICK)
        exits = []
        for handle in ready:
            role, number = handles[handle]
            if role == "wake":
                self.drain_wake()
            elif role.endswith("-exit"):
                exits.append((role[:-5], number))
            else:
                self.read_child(role, number)
        for role, number in exits:  # after reading: a child's last answer precedes its exit
            self.read_child(role, number)
            self.reap(role, number)

    def drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def read_child(self, role: str, number: int) -> None:
        slot = (self.hub.workers if role == "worker" else self.hub.savers).get(number)
        if slot is None:
            return
        try:
            while slot.conn.poll():
                message = slot.conn.recv()
                if message[0] == wire.BOOT_ERROR:
                    raise BootError(f"{role} {number} cannot start: {message[1]}")
                if role == "worker":
                    self.hub.on_worker_message(number, message)
                else:
                    self.hub.on_saver_message(number, message, time.monotonic())
                if message[0] == wire.READY:
                    self.boot_failures = 0
                    log.info("%s %d ready (pid %d)", role, number, message[1])
        except (EOFError, OSError):
            pass  # its sentinel reports the exit

    # -- children -------------------------------------------------------------------
    def spawn_missing(self) -> None:
        """Top up the children; during a drain only while there is still work for that role."""
        hub = self.hub
        need_workers = not self.draining or ((len(self.intake) or hub.suspects) and not hub.workers)
        need_savers = not self.draining or (not hub.savers and not hub.savers_settled())
        while need_workers and len(hub.workers) < self.settings.workers:
            hub.add_worker(WorkerSlot(*self.spawn(Worker)))
        while need_savers and len(hub.savers) < self.settings.savers:
            hub.add_saver(SaverSlot(*self.spawn(Saver)))

    def spawn(self, cls):
        self.next_number += 1
        number = self.next_number
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=child_main, args=(cls, child, self.settings, number),
                                   name=f"{cls.role}-{number}")
        process.start()
        child.close()
        log.info("spawned %s %d (pid %d)", cls.role, number, process.pid)
        return number, parent, process

    def reap(self, role: str, number: int) -> None:
        slot = (self.hub.workers if role == "worker" else self.hub.savers).get(number)
        if slot is None:
            return
        slot.process.join(1)
        code = slot.process.exitcode
        clean = slot.stopping and code == 0
        if code == wire.EXIT_BOOT_ERROR:
            raise BootError(f"{role} {number} cannot start (exit {code})")
        if not slot.ready and not slot.stopping:
            self.boot_failures += 1
            if self.boot_failures >= MAX_BOOT_FAILURES:
                raise BootError(f"{role} {number} died {self.boot_failures} times before it was ready (exit {code})")
        (log.info if clean else log.error)(
            "%s %d (pid %d) exited with %s%s", role, number, slot.process.pid, _describe_exit(code),
            "" if clean or self.draining else "; respawning")
        slot.conn.close()
        if role == "worker":
            self.hub.worker_exited(number, abnormal=not clean)
        else:
            self.hub.saver_exited(number, abnormal=not clean)

    def kill_unresponsive(self, now: float) -> None:
        for slot in self.hub.workers.values():
            if slot.busy_since is not None and now - slot.busy_since > WORKER_TIMEOUT and slot.process.is_alive():
                log.error("worker %d silent for %.0fs: killing it", slot.number, now - slot.busy_since)
                slot.process.kill()

    # -- signals and drain ------------------------------------------------------------
    def handle_signals(self) -> bool:
        """True on SIGQUIT: stop at once."""
        while self.signals:
            signum = self.signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGQUIT:
                log.warning("SIGQUIT: stopping now; what is not stored yet is kept for the next start")
                return True
            if self.draining:
                log.warning("%s: already draining (depth=%d); SIGQUIT stops at once", name, len(self.intake))
                continue
            self.start_drain(name)
        return False

    def start_drain(self, why: str) -> None:
        self.draining = self.hub.draining = True
        self.drain_deadline = time.monotonic() + self.settings.drain_timeout
        self.intake.stop_accepting()
        log.info("%s: draining: queue=%d in_flight=%d — accepting nothing more",
                 why, len(self.intake), self.hub.snapshot()["in_flight"])

    def advance_drain(self, now: float) -> bool:
        """One step of the shutdown order; True once every child has exited."""
        if now > self.drain_deadline:
            log.error("drain took longer than %.0fs: killing children", self.settings.drain_timeout)
            return True
        if self.hub.workers_settled():
            self.hub.stop_idle(self.hub.workers, now)
            if not self.hub.workers and self.hub.savers_settled():
                self.hub.stop_idle(self.hub.savers, now)
        return not self.hub.workers and not self.hub.savers

    def stop_all_now(self) -> None:
        for slots in (self.hub.workers, self.hub.savers):
            for slot in slots.values():
                if slot.process.is_alive():
                    slot.process.kill()
            for slot in list(slots.values()):
                slot.process.join(5)

    def finish(self, code: int) -> int:
        """The one way out: no child left running, whatever is not stored kept for the next start."""
        self.intake.stop_accepting()
        self.stop_all_now()
        entries, batches = self.hub.unsaved()
        if entries or batches:
            self.write_deadletter(entries, batches)
            return code or EXIT_UNFINISHED
        s = self.hub.snapshot()
        log.info("drained: accepted=%d processed=%d stored_batches=%d quarantined=%d lost=%d — exiting",
                 self.intake.accepted, s["processed"], s["store_batches"], s["quarantined"], s["lost"])
        return code

    # -- dead letters ---------------------------------------------------------------------
    def write_deadletter(self, entries: list[Entry], batches: list) -> None:
        path = self.settings.deadletter_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            for entry in entries:
                fh.write(json.dumps({"type": "post", "publication": entry.publication, "content": entry.content}) + "\n")
            for batch in batches:
                fh.write(json.dumps({"type": "delta", "batch_id": batch.delta.batch_id, "articles": batch.articles,
                                     "publications": [_aggregate_to_json(a) for a in batch.delta.publications.values()]}) + "\n")
        log.error("could not finish: %d posts and %d store batches written to %s; they are replayed on the next start",
                  len(entries), len(batches), path)

    def replay_deadletter(self) -> None:
        from ..core.models import Aggregate, Delta
        from .hub import Batch

        path = self.settings.deadletter_path
        if not path.exists():
            return
        entries, batches = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                if record["type"] == "post":
                    entries.append(Entry(-number, record["publication"], record["content"]))
                else:
                    pubs = {p[0]: Aggregate(*p) for p in record["publications"]}
                    batches.append(Batch(Delta(record["batch_id"], pubs), [], record.get("articles", 0)))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("%s:%d: unreadable dead-letter record skipped (%s)", path, number, exc)
        replayed = path.with_name(f"{path.name}.replayed-{int(time.time())}")
        path.rename(replayed)
        if entries:
            self.intake.push_front(entries)
        for batch in batches:
            self.hub.retry.append((0.0, batch))
        log.warning("replaying %d posts and %d store batches from %s (kept as %s)", len(entries), len(batches), path, replayed.name)


def _aggregate_to_json(a) -> list:
    return [a.key, a.name, a.articles, a.mentions, a.entity_articles]


def _describe_exit(code) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def _safe_store(url: str) -> str:
    return url.split("?", 1)[0]
