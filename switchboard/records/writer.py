"""The call-record writer: one thread that applies ops to the store, in order, in batches.

The event loop only appends to a queue (submit never blocks and never does I/O). The
thread takes what has gathered, up to `batch` ops, and applies it in one transaction.
When the database says no (locked by another process, disk full, file unreachable) the
batch stays at the head of the queue and is tried again after a growing pause; the
failure is logged once per kind until writes work again, and counted every time
(records_write_errors_total{kind}). Calls never wait for any of it.

The queue is bounded: past `max_pending` ops, turn and event writes are dropped (and
counted as "overflow"); a call's start, answer and end are always kept, so every call
still has its row once the database is back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from itertools import islice
from pathlib import Path

from pipeline.metrics import Metrics
from switchboard.records.store import (
    CallAnswered,
    CallEnded,
    CallStarted,
    Op,
    Purge,
    RecordStore,
    RecordStoreError,
    op_from_json,
    op_to_json,
)

__all__ = ["RecordWriter"]

log = logging.getLogger("switchboard.records")

_ALWAYS_KEPT = (CallStarted, CallAnswered, CallEnded)


class RecordWriter:
    def __init__(
        self,
        open_store: Callable[[], RecordStore],
        *,
        metrics: Metrics,
        max_pending: int = 50_000,
        batch: int = 500,
        retry_min: float = 0.5,
        retry_max: float = 10.0,
        spill_path: Path | None = None,
    ) -> None:
        self._open_store = open_store
        self.spill_path = spill_path  # writes still unsaved at close go here, for next time
        self._spill_done_at: int | None = None  # _done once the loaded spill is written
        self._metrics = metrics
        self.max_pending = max_pending
        self.batch = batch
        self.retry_min, self.retry_max = retry_min, retry_max
        self._store: RecordStore | None = None
        self._pending: deque[Op] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._submitted = 0  # ops accepted by submit()
        self._done = 0  # ops written, or given up as unwritable (a bug, logged)
        self._retry_at = 0.0
        self._backoff = retry_min
        self._logged: set[str] = set()  # failure kinds logged since writes last worked
        self.failing: str | None = None  # the kind of the current failure, None when fine
        self.last_error: str | None = None  # its message (no secrets: the store's wording)
        self.failed = threading.Event()  # set at every failure (for tests and readiness)
        self.purged = 0  # calls deleted by the last batch that held a Purge
        self.written_ops = 0

    # -- the event loop's side ---------------------------------------------------------

    def open(self) -> bool:
        """Load what the last run could not save, and open the store (blocking); on
        failure the first write tries again."""
        self._load_spill()
        try:
            self._store = self._open_store()
        except RecordStoreError as exc:
            self._failed(exc)
            return False
        return True

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="call-records", daemon=True)
            self._thread.start()

    def submit(self, op: Op) -> None:
        """Queue one write. Never blocks on the database."""
        with self._cond:
            if len(self._pending) >= self.max_pending and not isinstance(op, _ALWAYS_KEPT):
                if not isinstance(op, Purge):  # a purge comes round again by itself
                    self._count_error("overflow", f"{self.max_pending} writes waiting")
                return
            self._pending.append(op)
            self._submitted += 1
            self._metrics.records_pending.set(len(self._pending))
            self._cond.notify_all()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def kick(self) -> None:
        """Retry a failed batch now instead of after the pause."""
        with self._cond:
            self._retry_at = 0.0
            self._backoff = self.retry_min
            self._cond.notify_all()

    # -- blocking calls (from a worker thread or a test, never the event loop) ----------

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is written. False on timeout."""
        with self._cond:
            target = self._submitted
            self._retry_at = 0.0  # whoever waits wants a retry now
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._done >= target, timeout)

    def close(self, timeout: float = 5.0) -> int:
        """Flush (up to `timeout`), stop the thread, close the store. Returns the number
        of writes that could not be made (logged as an error)."""
        self.flush(timeout)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(timeout, 1.0))
            self._thread = None
        lost = len(self._pending)
        if lost and self._spill(list(self._pending)):
            lost = 0
        elif lost:
            log.error("call records: %d writes could not be saved at shutdown (%s)", lost,
                      self.failing or "timeout")
        if self._store is not None:
            self._store.close()
            self._store = None
        return lost

    # -- writes kept in a file across a restart -------------------------------------------

    def _spill(self, ops: list[Op]) -> bool:
        path = self.spill_path
        if path is None:
            return False
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text("".join(op_to_json(op) + "\n" for op in ops), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:
            log.error("call records: %d writes lost: the database (%s) and %s both "
                      "failed: %s", len(ops), self.failing or "timeout", path, exc)
            return False
        log.error("call records: %d writes could not be saved at shutdown (%s); kept in %s "
                  "and written at the next start", len(ops), self.failing or "timeout", path)
        return True

    def _load_spill(self) -> None:
        path = self.spill_path
        if path is None or not path.exists():
            return
        try:
            ops = [op_from_json(line) for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        except (OSError, ValueError) as exc:
            log.error("call records: cannot read %s (%s); left as it is", path, exc)
            return
        with self._cond:
            self._pending.extendleft(reversed(ops))  # older than anything of this run
            self._submitted += len(ops)
            self._spill_done_at = self._done + len(ops)
        log.info("call records: %d writes kept at the last shutdown go first", len(ops))

    # -- the thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._pending
                                          or time.monotonic() < self._retry_at):
                    wait = self._retry_at - time.monotonic() if self._pending else None
                    self._cond.wait(wait)
                if self._stop:
                    return
                batch = list(islice(self._pending, self.batch))
            self._write(batch)

    def _write(self, batch: list[Op]) -> None:
        try:
            if self._store is None:
                self._store = self._open_store()
            purged = self._store.apply(batch)
        except RecordStoreError as exc:
            self._failed(exc)
            return
        except Exception:
            # A bug in an op or the store, not the database: one by one, so that only
            # the op that fails is given up (logged with its traceback), not the batch.
            log.exception("call records: a batch of %d writes failed; retrying one by one",
                          len(batch))
            self._one_by_one(batch)
            return
        self._written(batch, purged)

    def _one_by_one(self, batch: list[Op]) -> None:
        for op in batch:
            try:
                assert self._store is not None
                purged = self._store.apply([op])
            except RecordStoreError as exc:
                self._failed(exc)
                return
            except Exception:
                log.exception("call records: giving up the write %r", op)
                self._count_error("other", "unwritable op")
                purged = 0
            self._written([op], purged)

    def _written(self, batch: list[Op], purged: int) -> None:
        with self._cond:
            for _ in batch:
                self._pending.popleft()
            self._done += len(batch)
            self.written_ops += len(batch)
            if any(isinstance(op, Purge) for op in batch):
                self.purged = purged
            self._backoff = self.retry_min
            recovered, self.failing, self.last_error = self.failing, None, None
            self._metrics.records_pending.set(len(self._pending))
            # Before waking flush(): whoever waited may look for the file at once.
            if self._spill_done_at is not None and self._done >= self._spill_done_at:
                self._spill_done_at = None
                assert self.spill_path is not None
                self.spill_path.unlink(missing_ok=True)  # all in the database now
            self._cond.notify_all()
        if recovered is not None:
            log.info("call records: writing again after %s", recovered)
            self._logged.clear()

    def _failed(self, exc: RecordStoreError) -> None:
        self._count_error(exc.kind, str(exc))
        with self._cond:
            self.failing, self.last_error = exc.kind, str(exc)
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, self.retry_max)
        self.failed.set()

    def _count_error(self, kind: str, message: str) -> None:
        self._metrics.records_write_errors_total.labels(kind).inc()
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("call records: cannot write (%s): %s; kept and retried, calls go on",
                        kind, message)
