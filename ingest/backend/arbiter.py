"""The backend's main process: owns signals and children, like gunicorn's arbiter.

One pass of the loop: wait (children's pipes and sentinels, signals, new posts, a timeout) →
handle what arrived → dispatch → kill the unresponsive → top up the children → publish the
status snapshot. SIGTERM/SIGINT start an orderly drain: stop accepting → workers finish the queue
and flush → savers commit everything → exit 0. Every way out (drain, SIGQUIT, a boot error, a
bug in the loop) goes through `finish`, and whatever is not stored by then stays in the journal,
which the next start recovers first (a fleet's intake hands it back to Pub/Sub instead). The mode
is chosen once, in intakes.build; routing state lives in Hub; this module only sequences.
"""

from __future__ import annotations

import faulthandler
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.connection import wait

from ..core.exitcodes import ExitCode
from ..core.storeurl import store_identity
from . import intakes, wire
from .child import child_main
from .errors import BootError
from .health import HealthFile, health_path
from .hub import SaverSlot, WorkerSlot
from .manager import serve
from .journal import Journal, JournalError
from .saver import Saver
from .worker import Worker

log = logging.getLogger("ingest.arbiter")

TICK = 0.25
WORKER_TIMEOUT = 300.0  # one request (a micro-batch of NER) may not take longer
MAX_BOOT_FAILURES = 3
SAVER_RESPAWN_DELAY = 5.0  # a saver that cannot reopen the store mid-run is retried this often
HOUSEKEEPING_EVERY = 1.0   # seconds between journal look-ups (oldest article, requeued quarantine)


class Arbiter:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)

    def __init__(self, settings, authkey: bytes, journal: Journal | None = None):
        self.settings = settings
        self.authkey = authkey
        self.ctx = multiprocessing.get_context("spawn")
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.journal, self.intake, self.hub = intakes.build(settings, on_put=self.wake, journal=journal)
        self.health = HealthFile(health_path(settings, self.journal.path))
        self.saver_ever_ready = False
        self.saver_respawn_at = 0.0
        self.next_housekeeping = 0.0
        self.oldest_age = 0.0
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
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID`: every thread's stack to the log
        for sig in self.SIGNALS:
            signal.signal(sig, lambda signum, frame: (self.signals.append(signum), self.wake()))

    def publish(self) -> None:
        now = time.monotonic()
        snapshot = self.hub.snapshot(now)
        snapshot["uptime_seconds"] = round(time.time() - self.started, 1)
        snapshot["oldest_uncommitted_seconds"] = self.oldest_age
        snapshot["store_healthy"] = self.hub.store_healthy(now, self.settings.store_unhealthy_after)
        self.intake.publish(snapshot)
        self.health.tick(now, "draining" if self.draining else "running", self.intake.status)

    def housekeeping(self, now: float) -> None:
        """Once a second: the oldest article's age, and quarantined articles an operator sent back."""
        if now < self.next_housekeeping:
            return
        self.next_housekeeping = now + HOUSEKEEPING_EVERY
        try:
            self.oldest_age = self.journal.oldest_age()
            if not self.draining:
                requeued = self.journal.requeued()
                if requeued:
                    log.info("%d quarantined articles sent back by an operator: queued again", len(requeued))
                    self.hub.unquarantine(len(requeued))
                    self.intake.push_back(requeued)
                self.hub.quarantined_now = self.journal.refresh_quarantine()  # `quarantine drop` too
        except Exception as exc:  # a busy or full disk: try again next time
            log.warning("journal housekeeping failed: %s", exc)

    # -- run ---------------------------------------------------------------------
    def run(self) -> int:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # inherited by spawned workers
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        self.install_signals()
        code = ExitCode.UNFINISHED
        try:
            self.recover()
            self.publish()
            serve(self.intake, self.settings.manager_address, self.authkey)  # an address in use fails here
            self.spawn_missing()
            self.intake.start()  # a fleet pulls only once the children are on their way
            log.info("ingestiond started: workers=%d savers=%d store=%s queue=%d cache=%d flush=%.1fs",
                     self.settings.workers, self.settings.savers, _safe_store(self.settings.store_url),
                     self.settings.queue_size, self.settings.cache_size, self.settings.flush_interval)
            code = self.loop()
        except BootError as exc:
            log.critical("%s — stopping instead of respawning", exc)
            code = ExitCode.BOOT_ERROR
        except JournalError as exc:
            log.critical("cannot start: %s", exc)
            code = ExitCode.USAGE
        except OSError:
            code = ExitCode.UNFINISHED
            raise  # the manager address in use: the command line names it
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
                return ExitCode.UNFINISHED
            now = time.monotonic()
            self.hub.dispatch(now)
            self.kill_unresponsive(now)
            if self.draining and self.advance_drain(now):
                return ExitCode.OK
            self.spawn_missing(now)
            self.housekeeping(now)
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
                    self.boot_error(role, number, message[1])
                    continue
                if message[0] == wire.FATAL:  # two processes under one writer name: no respawn fixes that
                    raise BootError(f"{role} {number}: {message[1]}")
                if role == "worker":
                    self.hub.on_worker_message(number, message)
                else:
                    self.hub.on_saver_message(number, message, time.monotonic())
                if message[0] == wire.READY:
                    self.boot_failures = 0
                    self.saver_ever_ready |= role == "saver"
                    log.info("%s %d ready (pid %d)", role, number, message[1])
        except (EOFError, OSError):
            pass  # its sentinel reports the exit

    def boot_error(self, role: str, number: int, reason: str) -> None:
        """A child that cannot start stops the backend, except a saver of a store that worked before:
        that is a store outage (read-only remount, lost credentials), retried while the journal keeps
        every article and /readyz says 503."""
        if role == "saver" and self.saver_ever_ready:
            log.error("saver %d cannot reopen the store: %s; retrying in %.0fs", number, reason, SAVER_RESPAWN_DELAY)
            self.hub.store_failed(time.monotonic())
            self.saver_respawn_at = time.monotonic() + SAVER_RESPAWN_DELAY
            return
        raise BootError(f"{role} {number} cannot start: {reason}")

    # -- children -------------------------------------------------------------------
    def spawn_missing(self, now: float = 0.0) -> None:
        """Top up the children; during a drain only while there is still work for that role."""
        hub = self.hub
        need_workers = not self.draining or ((len(self.intake) or hub.suspects) and not hub.workers)
        need_savers = (not self.draining or (not hub.savers and not hub.savers_settled())) \
            and now >= self.saver_respawn_at
        while need_workers and len(hub.workers) < self.settings.workers:
            hub.add_worker(WorkerSlot(*self.spawn(Worker)))
        while need_savers and len(hub.savers) < self.settings.savers:
            # a respawned saver takes over the documents of the one it replaces: writers are per slot
            taken = {slot.writer for slot in hub.savers.values()}
            writer = next(w for w in (f"{self.writer}-{i}" for i in range(self.settings.savers)) if w not in taken)
            settings = self.settings.model_copy(update={"writer": writer})
            hub.add_saver(SaverSlot(*self.spawn(Saver, settings), writer=writer))

    @property
    def writer(self) -> str:
        return self.settings.writer or self.journal.writer_id()

    def spawn(self, cls, settings=None):
        self.next_number += 1
        number = self.next_number
        parent, child = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(target=child_main, args=(cls, child, settings or self.settings, number, os.getpid()),
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
        clean = slot.stopping and code == ExitCode.OK
        if code == ExitCode.BOOT_ERROR and not (role == "saver" and self.saver_ever_ready):
            raise BootError(f"{role} {number} cannot start (exit {code})")
        if not slot.ready and not slot.stopping and code != ExitCode.BOOT_ERROR:
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
                 why, len(self.intake), self.hub.snapshot(time.monotonic())["in_flight"])

    def advance_drain(self, now: float) -> bool:
        """One step of the shutdown order; True once every child has exited."""
        if now > self.drain_deadline:
            log.error("drain took longer than %.0fs: killing children", self.settings.drain_timeout)
            return True
        if self.hub.workers_settled() and not self.intake.busy():
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
        """The one way out: no child left running; whatever is not stored stays in the journal."""
        self.intake.stop_accepting()
        self.stop_all_now()
        s = self.hub.snapshot(time.monotonic())
        left = self.intake.close()  # it says where what is left waits (the journal, or back in Pub/Sub)
        self.health.stopped()
        self.journal.close()
        if left:
            return code or ExitCode.UNFINISHED
        log.info("drained: accepted=%d processed=%d stored_batches=%d quarantined=%d — exiting",
                 self.intake.accepted, s["processed"], s["store_batches"], s["quarantined"])
        return code

    # -- recovery ---------------------------------------------------------------------
    def recover(self) -> None:
        """After any stop: recorded batches are committed again first (same ids), then the rest is fed."""
        self.journal.claim(store_identity(self.settings.store_url))
        found = self.journal.recover(self.settings.counting_rules)
        self.hub.recover(found, time.monotonic(), time.time())
        if found.batches or found.entries:
            log.warning("recovering from the journal: %d recorded batches (%d articles) to commit again, "
                        "then %d accepted articles", len(found.batches), sum(len(b[2]) for b in found.batches),
                        len(found.entries))
        if found.quarantined:
            log.warning("%d quarantined articles in the journal (`ingestiond quarantine list`)", found.quarantined)


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
