"""Stream workers and the main process tick at spread phases of the 20 ms period."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from media.pacer import PERIOD
from pipeline.metrics import Metrics
from switchboard.app import Switchboard
from switchboard.config import Config
from switchboard.stream_worker import WorkerRole


async def _phase(workers: int, role: WorkerRole | None = None) -> float | None:
    config = Config.model_validate({"agent": "echo", "records": {"enabled": False},
                                    "streams": {"workers": workers}})
    app = Switchboard(config, metrics=Metrics(CollectorRegistry()), worker=role)
    if app.workers is not None:
        await app.workers.stop(timeout=1)  # never started: removes its socket directory
    return app._pacer_phase()


async def test_workers_spread_over_the_period_and_the_main_process_sits_between() -> None:
    roles = [WorkerRole(None, i, 3, "unused") for i in range(3)]  # type: ignore[arg-type]
    assert [await _phase(3, role) for role in roles] == [0.0, PERIOD / 3, 2 * PERIOD / 3]
    assert await _phase(3) == PERIOD / 6  # halfway between workers 0 and 1
    assert await _phase(0) is None  # one process: nobody to keep out of the way of
