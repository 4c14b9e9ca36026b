"""The backend's main process: owns signals and children, like gunicorn's arbiter.

One pass of the loop: wait (children's pipes and sentinels, signals, new posts, a timeout) →
handle what arrived → dispatch → kill the unresponsive → top up the children. SIGTERM/SIGINT
start an orderly drain: stop accepting → workers finish the queue and flush → savers commit
everything → exit 0. Routing state lives in Hub; this module only sequences.
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
from .hub import Hub, SaverSlot, WorkerSlot
from .models import Delta
from .queues import Intake, serve
from .saver import saver_main
from .worker import worker_main

log = logging.getLogger("ingest.arbiter")

TICK = 0.25
WORKER_TIMEOUT = 300.0  # one request (a micro-batch of NER) may not take longer
MAX_BOOT_FAILURES = 3


class BootError(SystemExit):
    pass


class Arbiter:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

    def __init__(self, settings):
        self.settings = settings
        self.ctx = multiprocessing.get_context("spawn")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.intake = Intake(settings.queue_size, on_put=self.wake, stats=self.stats)
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

    def stats(self) -> dict:
        stats = self.hub.stats()
        stats["uptime_seconds"] = round(time.time() - self.started, 1)
        return stats

    def install_signals(self) -> None:
        for sig in self.SIGNALS:
            signal.signal(sig, lambda signum, frame: (self.signals.append(signum), self.wake()))

    # -- run ---------------------------------------------------------------------
    def run(self) -> int:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by spawned workers
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.install_signals()
        self.replay_deadletter()
        serve(self.intake, self.settings.manager_address, self.settings.authkey)
        self.spawn_missing()
        log.info("ingestiond started: workers=%d savers=%d store=%s queue=%d cache=%d flush=%.1fs",
                 self.settings.workers, self.settings.savers, _safe_store(self.settings.store_url),
                 self.settings.queue_size, self.settings.cache_size, self.settings.flush_interval)
        try:
            while True:
                self.wait_once()
                self.handle_signals()
                now = time.monotonic()
                self.hub.dispatch(now)
                self.kill_unresponsive(now)
                if self.draining and self.advance_drain(now):
                    return self.finish()
                self.spawn_missing()
        except BootError as exc:
            self.stop_all_now()
            return int(exc.code)

    def wait_once(self) -> None:
        handles = {self._wake_r: ("wake", None)}
        for role, slots in (("worker", self.hub.workers), ("saver", self.hub.savers)):
            for number, slot in slots.items():
                handles[slot.conn] = (role, number)
                handles[slot.process.sentinel] = (role + "-exit", number)
        ready = wait(list(handles), timeout=TICK)
        deaths = []
        for handle in ready:
            role, number = handles[handle]
            if role == "wake":
                self.drain_wake()
            elif role.endswith("-exit"):
                deaths.append((role[:-5], number))
            else:
                self.read_child(role, number)
        for role, number in deaths:  # after reading: a child's last answer precedes its death
            self.reap(role, number)

    def drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def read_child(self, role: str, number: int) -> None:
        slots = self.hub.workers if role == "worker" else self.hub.savers
        slot = slots.get(number)
        if slot is None:
            return
        try:
            while slot.conn.poll():
                message = slot.conn.recv()
                if message[0] == wire.BOOT_ERROR:
                    self.boot_failed(role, number, message[1])
                elif role == "worker":
                    self.hub.on_worker_message(number, message)
                else:
                    self.hub.on_saver_message(number, message)
                if message[0] == wire.READY:
                    self.boot_failures = 0
                    log.info("%s %d ready (pid %d)", role, number, message[1])
        except (EOFError, OSError):
            pass  # its sentinel reports the exit

    def boot_failed(self, role: str, number: int, reason: str) -> None:
        log.critical("%s %d cannot start: %s — stopping instead of respawning", role, number, reason)
        raise BootError(wire.EXIT_BOOT_ERROR)

    # -- children -------------------------------------------------------------------
    def spawn_missing(self) -> None:
        """Top up the children; during a drain only while there is still work for that role."""
        need_workers = not self.draining or (len(self.intake) and not self.hub.workers)
        need_savers = not self.draining or (not self.hub.savers and not self.hub.savers_settled())
        while need_workers and len(self.hub.workers) < self.settings.workers:
            self.hub.add_worker(WorkerSlot(*self.spawn(worker_main, "worker")))
        while need_savers and len(self.hub.savers) < self.settings.savers:
            self.hub.add_saver(SaverSlot(*self.spawn(saver_main, "saver")))

    def spawn(self, target, role: str):
        self.next_number += 1
        number = self.next_number
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=target, args=(child, self.settings, number), name=f"{role}-{number}")
        process.start()
        child.close()
        log.info("spawned %s %d (pid %d)", role, number, process.pid)
        return number, parent, process

    def reap(self, role: str, number: int) -> None:
        slots = self.hub.workers if role == "worker" else self.hub.savers
        slot = slots.get(number)
        if slot is None:
            return
        slot.process.join(1)
        code = slot.process.exitcode
        expected = slot.stopping and code == 0
        if not slot.ready and not slot.stopping:
            self.boot_failures += 1
            if self.boot_failures >= MAX_BOOT_FAILURES:
                self.boot_failed(role, number, f"died {self.boot_failures} times before it was ready (exit {code})")
        (log.info if expected else log.error)(
            "%s %d (pid %d) exited with %s%s", role, number, slot.process.pid, _describe_exit(code),
            "" if expected or self.draining and slot.stopping else "; respawning")
        slot.conn.close()
        if role == "worker":
            self.hub.worker_died(number)
        else:
            self.hub.saver_died(number)

    def kill_unresponsive(self, now: float) -> None:
        for role, slots in (("worker", self.hub.workers), ("saver", None)):
            if slots is None:
                continue
            for slot in slots.values():
                if slot.busy_since is not None and now - slot.busy_since > WORKER_TIMEOUT and slot.process.is_alive():
                    log.error("%s %d silent for %.0fs: killing it", role, slot.number, now - slot.busy_since)
                    slot.process.kill()

    # -- signals and drain ------------------------------------------------------------
    def handle_signals(self) -> None:
        while self.signals:
            signum = self.signals.pop(0)
            name = signal.Signals(signum).name
            if signum == signal.SIGQUIT:
                log.warning("SIGQUIT: stopping now; unsaved work goes to the dead-letter file")
                self.stop_all_now()
                raise SystemExit(self.finish(forced=True))
            if self.draining:
                log.warning("%s: already draining (depth=%d); SIGQUIT stops at once", name, len(self.intake))
                continue
            self.start_drain(name)

    def start_drain(self, why: str) -> None:
        self.draining = self.hub.draining = True
        self.drain_deadline = time.monotonic() + self.settings.drain_timeout
        self.intake.stop_accepting()
        log.info("%s: draining: queue=%d in_flight=%d — accepting nothing more",
                 why, len(self.intake), self.hub.stats()["in_flight"])

    def advance_drain(self, now: float) -> bool:
        """One step of the shutdown order; True once every child has exited."""
        if now > self.drain_deadline:
            log.error("drain took longer than %.0fs: killing children", self.settings.drain_timeout)
            self.stop_all_now()
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

    def finish(self, forced: bool = False) -> int:
        posts, deltas = self.hub.unsaved()
        if posts or deltas:
            self.write_deadletter(posts, deltas)
            return 1
        s = self.hub.stats()
        log.info("drained: accepted=%d processed=%d stored_batches=%d lost=%d — exiting",
                 self.intake.accepted, s["processed"], s["store_batches"], s["lost"])
        return 1 if forced else 0

    # -- dead letters ---------------------------------------------------------------------
    def write_deadletter(self, posts: list, deltas: list[Delta]) -> None:
        path = self.settings.deadletter_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            for post in posts:
                fh.write(json.dumps({"type": "post", "publication": post[0], "content": post[1]}) + "\n")
            for delta in deltas:
                fh.write(json.dumps({"type": "delta", "batch_id": delta.batch_id,
                                     "publications": [wire.post_to_wire(p) for p in delta.publications.values()]}) + "\n")
        log.error("could not finish: %d posts and %d store batches written to %s; they are replayed on the next start",
                  len(posts), len(deltas), path)

    def replay_deadletter(self) -> None:
        path = self.settings.deadletter_path
        if not path.exists():
            return
        posts, deltas = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                if record["type"] == "post":
                    posts.append((record["publication"], record["content"]))
                else:
                    deltas.append(wire.delta_from_wire((record["batch_id"], [tuple(p) for p in record["publications"]])))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("%s:%d: unreadable dead-letter record skipped (%s)", path, number, exc)
        replayed = path.with_name(f"{path.name}.replayed-{int(time.time())}")
        path.rename(replayed)
        if posts:
            self.intake.push_front(posts)
        for delta in deltas:
            self.hub.retry.append((0.0, delta))
        log.warning("replaying %d posts and %d store batches from %s (kept as %s)", len(posts), len(deltas), path, replayed.name)


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
