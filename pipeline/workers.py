"""Model workers: blocking inference in threads, results handed back to the event loop.

One ModelWorker per engine per process, shared by all calls. A job is a plain callable
run in one of the worker's threads (CTranslate2, ONNX Runtime and llama.cpp release the
GIL, so the threads run in parallel with the loop and with each other):

    text = await asr_worker.submit(partial(asr.transcribe, pcm, hint), deadline_s=2.0)

    async with llm_worker.stream(partial(llm.stream_chat, msgs, max_tokens=80,
                                         temperature=0.6)) as tokens:
        async for token in tokens:
            ...                          # tokens.cancel() on barge-in

Jobs wait in a bounded queue. A full queue refuses a job at once (QueueFull: the call
says "please hold" rather than wait behind a backlog); a job whose deadline passes while
it waits is never started (DeadlineExceeded). The deadline bounds the wait, not the run:
inference already started cannot be interrupted, so a caller that wants to bound the
whole job awaits it under asyncio.timeout. A stream job is a generator: each item is
posted to the loop as it is produced (call_soon_threadsafe into an asyncio.Queue), and a
cancelled stream stops at the next item, closes the generator and frees the thread.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from media.clock import Clock, MonotonicClock
from pipeline.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


class WorkerError(RuntimeError):
    """A job could not be run by a model worker (not an error of the engine itself)."""


class QueueFull(WorkerError):
    def __init__(self, engine: str, limit: int) -> None:
        super().__init__(f"{engine} worker queue is full ({limit} jobs waiting)")
        self.engine = engine


class DeadlineExceeded(WorkerError):
    def __init__(self, engine: str, late_s: float) -> None:
        super().__init__(f"{engine} job waited past its deadline by {late_s:.3f} s")
        self.engine = engine


class WorkerClosed(WorkerError):
    def __init__(self, engine: str) -> None:
        super().__init__(f"{engine} worker is shut down")
        self.engine = engine


_ITEM, _END, _ERROR = range(3)


def _set_event() -> threading.Event:
    e = threading.Event()
    e.set()
    return e


@dataclass(eq=False, slots=True)
class _Job:
    fn: Callable[[], Any]
    streaming: bool
    deadline: float | None  # absolute clock time; None: no deadline
    loop: asyncio.AbstractEventLoop
    sink: asyncio.Queue[tuple[int, Any]]  # (_ITEM|_END|_ERROR, value) back on the loop
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Cleared by WorkerStream.pause(): the thread waits before asking for the next item.
    running: threading.Event = field(default_factory=_set_event)


class ModelWorker:
    """`threads` worker threads in front of one engine, with at most `max_queue` jobs
    waiting. Engines that are not thread-safe (llama.cpp) get threads=1."""

    def __init__(
        self,
        name: str,
        *,
        threads: int = 1,
        max_queue: int = 8,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
    ) -> None:
        if threads < 1 or max_queue < 0:
            raise ValueError(f"{name}: threads must be >= 1 and max_queue >= 0")
        self.name = name
        self.max_queue = max_queue
        self._metrics = metrics
        self._clock = clock or MonotonicClock()
        self._waiting: collections.deque[_Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = 0
        self._running: set[_Job] = set()  # started and not finished
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-worker-{i}", daemon=True)
            for i in range(threads)
        ]
        for t in self._threads:
            t.start()

    # --- event-loop side ---------------------------------------------------------

    async def submit(self, job: Callable[[], T], deadline_s: float | None = None) -> T:
        """Run job() in a worker thread and return its result (or raise its exception).
        Cancelling the awaiting task withdraws a job that has not started."""
        j = self._enqueue(job, streaming=False, deadline_s=deadline_s)
        try:
            kind, value = await j.sink.get()
        finally:
            self._withdraw(j)
        if kind == _ERROR:
            raise value
        return value

    def stream(
        self, job: Callable[[], Iterator[T]], deadline_s: float | None = None
    ) -> WorkerStream[T]:
        """Queue a generator job now (QueueFull is raised here, at once) and return the
        stream of its items. Must be called from the event loop."""
        j = self._enqueue(job, streaming=True, deadline_s=deadline_s)
        return WorkerStream(j, self._withdraw)

    @property
    def depth(self) -> int:
        """Jobs waiting, not yet started."""
        return len(self._waiting)

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return self._busy

    def close(self, timeout_s: float = 5.0) -> None:
        """Refuse new jobs, fail the waiting ones with WorkerClosed, stop running streams
        at their next item, and join the threads (bounded by timeout_s each)."""
        with self._cond:
            self._closed = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
            running = list(self._running)
        self._set_depth()
        for j in running:
            j.running.set()  # a paused stream wakes up to see the worker is closing
        for j in waiting:
            self._post(j, _ERROR, WorkerClosed(self.name))
        for t in self._threads:
            t.join(timeout_s)

    async def aclose(self, timeout_s: float = 5.0) -> None:
        await asyncio.to_thread(self.close, timeout_s)

    def _withdraw(self, j: _Job) -> None:
        """The caller gave up on j: a waiting job leaves the queue, a running one stops
        at its next item (streams) or has its result dropped (one-shot jobs)."""
        j.cancelled.set()
        j.running.set()  # a paused stream wakes up to stop
        with self._cond:
            try:
                self._waiting.remove(j)
            except ValueError:
                return  # already started or finished
        self._set_depth()

    def _enqueue(
        self, fn: Callable[[], Any], *, streaming: bool, deadline_s: float | None
    ) -> _Job:
        loop = asyncio.get_running_loop()
        deadline = None if deadline_s is None else self._clock.now() + deadline_s
        j = _Job(fn, streaming, deadline, loop, asyncio.Queue())
        with self._cond:
            if self._closed:
                raise WorkerClosed(self.name)
            # Free threads take jobs at once, so only the excess counts against the limit.
            idle = len(self._threads) - self._busy
            if len(self._waiting) - idle >= self.max_queue:
                if self._metrics is not None:
                    self._metrics.queue_rejected_total.labels(engine=self.name).inc()
                raise QueueFull(self.name, self.max_queue)
            self._waiting.append(j)
            self._cond.notify()
        self._set_depth()
        return j

    # --- worker-thread side ------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                j = self._waiting.popleft()
                self._busy += 1
                self._running.add(j)
            self._set_depth()
            try:
                self._execute(j)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._running.discard(j)

    def _execute(self, j: _Job) -> None:
        if j.cancelled.is_set():
            return
        if j.deadline is not None and (late := self._clock.now() - j.deadline) > 0:
            self._post(j, _ERROR, DeadlineExceeded(self.name, late))
            return
        if not j.streaming:
            try:
                result = j.fn()
            except BaseException as e:  # handed to the awaiting caller, not swallowed
                self._post(j, _ERROR, e)
            else:
                self._post(j, _END, result)
            return
        gen: Iterator[Any] | None = None
        try:
            gen = iter(j.fn())
            # Checked before and after each item: a cancelled stream stops at the next one.
            while not (j.cancelled.is_set() or self._closed):
                j.running.wait()  # paused by the consumer (see WorkerStream.pause)
                if j.cancelled.is_set() or self._closed:
                    break
                try:
                    item = next(gen)
                except StopIteration:
                    break
                if j.cancelled.is_set():
                    break
                self._post(j, _ITEM, item)
            self._post(j, _END, None)
        except BaseException as e:
            self._post(j, _ERROR, e)
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                try:
                    close()  # stops llama.cpp / closes the HTTP response of an abandoned stream
                except Exception:
                    log.exception("%s: closing a stream job failed", self.name)

    def _post(self, j: _Job, kind: int, value: Any) -> None:
        try:
            j.loop.call_soon_threadsafe(j.sink.put_nowait, (kind, value))
        except RuntimeError:
            # The loop that submitted the job has closed: nobody is left to tell.
            log.debug("%s: result dropped, its event loop is closed", self.name)

    def _set_depth(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(engine=self.name).set(len(self._waiting))


class WorkerStream(Generic[T]):
    """Async iterator over a stream job's items. cancel() (or leaving `async with`)
    stops the generator at its next item; the iteration then ends quietly. The engine's
    exceptions, DeadlineExceeded and WorkerClosed are raised from the iteration."""

    def __init__(self, job: _Job, withdraw: Callable[[_Job], None]) -> None:
        self._job = job
        self._withdraw = withdraw
        self._done = False

    def cancel(self) -> None:
        self._withdraw(self._job)
        self._done = True

    def pause(self) -> None:
        """Hold the generator before its next item (it keeps its thread and state) until
        resume(): lets another engine have the CPU now, when its output is wanted first.
        cancel() and closing the worker wake a paused stream."""
        if not self._done:
            self._job.running.clear()

    def resume(self) -> None:
        self._job.running.set()

    @property
    def paused(self) -> bool:
        return not self._job.running.is_set()

    @property
    def cancelled(self) -> bool:
        return self._job.cancelled.is_set()

    def __aiter__(self) -> WorkerStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._done:
            raise StopAsyncIteration
        try:
            kind, value = await self._job.sink.get()
        except BaseException:
            self.cancel()  # the consumer was cancelled: stop the producer too
            raise
        if self._done:  # cancelled while waiting
            raise StopAsyncIteration
        if kind == _ITEM:
            return value
        self._done = True
        if kind == _ERROR:
            raise value
        raise StopAsyncIteration

    async def __aenter__(self) -> WorkerStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()
