from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

from media.clock import ManualClock
from pipeline.asr import WhisperAsr
from pipeline.metrics import Metrics
from pipeline.tts import PiperTts
from pipeline.workers import (
    DeadlineExceeded,
    ModelWorker,
    QueueFull,
    WorkerClosed,
)

WAIT = 10.0  # generous bound on thread hand-offs; never reached when the code works


class Gate:
    """A job that blocks its worker thread until the test opens the gate."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        if not self.opened.wait(WAIT):
            raise TimeoutError("gate never opened")
        return "gate"

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, WAIT)


def gauge(metrics: Metrics, name: str, engine: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"engine": engine})


@pytest.fixture
def worker(metrics: Metrics) -> Iterator[ModelWorker]:
    w = ModelWorker("asr", threads=1, max_queue=1, metrics=metrics)
    yield w
    w.close()


async def test_submit_runs_in_a_worker_thread(worker: ModelWorker) -> None:
    loop_thread = threading.get_ident()
    assert await worker.submit(threading.get_ident) != loop_thread
    assert await worker.submit(lambda: 6 * 7) == 42


async def test_queue_full_refuses_at_once(worker: ModelWorker, metrics: Metrics) -> None:
    gate = Gate()
    running = asyncio.ensure_future(worker.submit(gate))
    await gate.wait_started()
    queued = asyncio.ensure_future(worker.submit(lambda: "queued"))
    await asyncio.sleep(0)  # let it enqueue
    assert worker.depth == 1 and worker.busy == 1
    assert gauge(metrics, "switchboard_queue_depth", "asr") == 1
    with pytest.raises(QueueFull, match=r"asr worker queue is full \(1 jobs waiting\)"):
        await worker.submit(lambda: "refused")
    with pytest.raises(QueueFull):
        worker.stream(lambda: iter([1]))
    assert gauge(metrics, "switchboard_queue_rejected_total", "asr") == 2
    gate.opened.set()
    assert await running == "gate"
    assert await queued == "queued"
    assert gauge(metrics, "switchboard_queue_depth", "asr") == 0


async def test_deadline_passed_before_start(metrics: Metrics) -> None:
    clock = ManualClock(100.0)
    w = ModelWorker("tts", threads=1, max_queue=4, metrics=metrics, clock=clock)
    ran: list[str] = []
    try:
        gate = Gate()
        running = asyncio.ensure_future(w.submit(gate))
        await gate.wait_started()
        late = asyncio.ensure_future(w.submit(lambda: ran.append("late"), deadline_s=1.0))
        in_time = asyncio.ensure_future(w.submit(lambda: ran.append("ok"), deadline_s=5.0))
        await asyncio.sleep(0)
        clock.advance(2.0)  # the first job held the thread past the deadline
        gate.opened.set()
        await running
        with pytest.raises(DeadlineExceeded, match=r"tts job waited past its deadline by 1\.000 s"):
            await late
        await in_time
        assert ran == ["ok"]  # the late job never ran
    finally:
        w.close()


async def test_engine_exception_reaches_the_caller(worker: ModelWorker) -> None:
    class EngineError(RuntimeError):
        pass

    err = EngineError("model exploded")

    def boom() -> None:
        raise err

    with pytest.raises(EngineError) as caught:
        await worker.submit(boom)
    assert caught.value is err
    assert await worker.submit(lambda: "still alive") == "still alive"


async def test_stream_hands_items_back_as_produced(worker: ModelWorker) -> None:
    step = threading.Semaphore(0)

    def tokens() -> Iterator[str]:
        for t in ["Hel", "lo", "!"]:
            step.acquire()  # produce only when the test says so
            yield t

    got: list[str] = []
    async with worker.stream(tokens) as stream:
        for _ in range(3):
            step.release()
            got.append(await anext(stream))
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
    assert got == ["Hel", "lo", "!"]


async def test_stream_cancel_stops_generator_and_frees_thread(worker: ModelWorker) -> None:
    produced: list[int] = []
    closed = threading.Event()

    def endless() -> Iterator[int]:
        try:
            n = 0
            while True:
                produced.append(n)
                yield n
                n += 1
        finally:
            closed.set()

    stream = worker.stream(endless)
    got = [await anext(stream) for _ in range(3)]
    stream.cancel()  # barge-in
    assert got == [0, 1, 2]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert await asyncio.to_thread(closed.wait, WAIT)
    # The single worker thread has moved on to the next job.
    assert await asyncio.wait_for(worker.submit(lambda: "next"), WAIT) == "next"
    assert stream.cancelled


async def test_stream_error_after_items(worker: ModelWorker) -> None:
    def failing() -> Iterator[str]:
        yield "one"
        raise ConnectionResetError("server went away")

    got: list[str] = []
    with pytest.raises(ConnectionResetError, match="server went away"):
        async for item in worker.stream(failing):
            got.append(item)
    assert got == ["one"]


async def test_cancelled_consumer_task_stops_the_producer(worker: ModelWorker) -> None:
    closed = threading.Event()
    first = asyncio.Event()

    def endless() -> Iterator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.set()

    async def consume() -> None:
        async for _ in worker.stream(endless):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(closed.wait, WAIT)
    assert await asyncio.wait_for(worker.submit(lambda: "free"), WAIT) == "free"


async def test_cancelled_waiting_job_is_withdrawn(worker: ModelWorker, metrics: Metrics) -> None:
    gate = Gate()
    running = asyncio.ensure_future(worker.submit(gate))
    await gate.wait_started()
    ran: list[str] = []
    waiting = asyncio.ensure_future(worker.submit(lambda: ran.append("x")))
    await asyncio.sleep(0)
    assert worker.depth == 1
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert worker.depth == 0 and gauge(metrics, "switchboard_queue_depth", "asr") == 0
    room = asyncio.ensure_future(worker.submit(lambda: "room"))  # its place is free again
    await asyncio.sleep(0)
    assert worker.depth == 1
    gate.opened.set()
    await running
    assert await room == "room"
    assert ran == []


async def test_close_fails_waiting_jobs_and_refuses_new_ones(metrics: Metrics) -> None:
    w = ModelWorker("llm", threads=1, max_queue=2, metrics=metrics)
    gate = Gate()
    running = asyncio.ensure_future(w.submit(gate))
    await gate.wait_started()
    waiting = asyncio.ensure_future(w.submit(lambda: "never"))
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(w.aclose())
    with pytest.raises(WorkerClosed, match="llm worker is shut down"):
        await waiting
    gate.opened.set()
    assert await running == "gate"  # a running job finishes
    await closing
    with pytest.raises(WorkerClosed):
        await w.submit(lambda: "late")


async def test_threads_run_jobs_in_parallel(metrics: Metrics) -> None:
    w = ModelWorker("asr", threads=2, max_queue=0, metrics=metrics)
    try:
        gates = [Gate(), Gate()]
        jobs = [asyncio.ensure_future(w.submit(g)) for g in gates]
        for g in gates:
            await g.wait_started()  # both run at once: two threads
        with pytest.raises(QueueFull):  # max_queue=0: nothing may wait
            await w.submit(lambda: None)
        for g in gates:
            g.opened.set()
        assert await asyncio.gather(*jobs) == ["gate", "gate"]
    finally:
        w.close()


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="threads must be >= 1"):
        ModelWorker("x", threads=0)


# --- real engines behind workers ----------------------------------------------------


@pytest.mark.slow
async def test_real_asr_in_a_worker_leaves_the_loop_free(
    whisper_asr: WhisperAsr, piper_speech_16k: Callable[[str], bytes], metrics: Metrics
) -> None:
    audio = piper_speech_16k("Can I speak to the manager please?")
    w = ModelWorker("asr", threads=1, max_queue=2, metrics=metrics)
    try:
        job = asyncio.ensure_future(w.submit(lambda: whisper_asr.transcribe(audio)))
        ticks = 0
        while not job.done():
            await asyncio.sleep(0.01)  # the loop keeps turning while Whisper decodes
            ticks += 1
        assert "manager" in job.result().text.lower()
        assert ticks >= 2
    finally:
        w.close()


@pytest.mark.slow
async def test_real_tts_stream_cancelled_mid_answer(piper_tts: PiperTts, metrics: Metrics) -> None:
    w = ModelWorker("tts", threads=1, max_queue=2, metrics=metrics)
    text = " ".join(f"This is sentence number {n}." for n in range(1, 30))
    try:
        async with w.stream(lambda: piper_tts.synthesize(text)) as audio:
            first = await anext(audio)
            assert len(first) > 0.5 * 2 * piper_tts.sample_rate
        # Leaving the block cancelled it; the thread is free for the next phrase.
        short = await asyncio.wait_for(
            w.submit(lambda: b"".join(piper_tts.synthesize("Yes?"))), WAIT
        )
        assert len(short) > 0
    finally:
        w.close()


async def test_a_paused_stream_produces_nothing_until_resumed(worker: ModelWorker) -> None:
    produced: list[int] = []
    go = threading.Event()

    def counting() -> Iterator[int]:
        for n in range(6):
            if n == 1:
                assert go.wait(WAIT)  # like a token still being computed when pause() comes
            produced.append(n)
            yield n

    stream = worker.stream(counting)
    assert await anext(stream) == 0
    stream.pause()
    assert stream.paused
    go.set()  # the item in progress completes; no next one is asked for
    assert await anext(stream) == 1
    for _ in range(5):  # several thread hand-offs: nothing more is produced
        await asyncio.to_thread(lambda: None)
    assert produced == [0, 1]
    stream.resume()
    assert not stream.paused
    rest = [n async for n in stream]
    assert [0, 1, *rest] == list(range(6))


async def test_cancel_and_close_wake_a_paused_stream(metrics: Metrics) -> None:
    for ending in ("cancel", "close"):
        w = ModelWorker("llm", threads=1, max_queue=1, metrics=metrics)
        closed = threading.Event()

        def endless(closed: threading.Event = closed) -> Iterator[int]:
            try:
                n = 0
                while True:
                    yield n
                    n += 1
            finally:
                closed.set()

        stream = w.stream(endless)
        await anext(stream)
        stream.pause()
        if ending == "cancel":
            stream.cancel()
            assert await asyncio.to_thread(closed.wait, WAIT)  # the generator was closed
            assert await asyncio.wait_for(w.submit(lambda: "next"), WAIT) == "next"
            w.close()
        else:
            await w.aclose(timeout_s=WAIT)
            assert await asyncio.to_thread(closed.wait, WAIT)
        assert not any(t.is_alive() for t in w._threads), ending
