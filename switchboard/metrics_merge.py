"""One Prometheus exposition for several processes (the main process and its stream
workers, switchboard.workers).

Every process keeps its own registry; /metrics on the main process parses the workers'
expositions and adds them up, series by series, so dashboards and alerts see one
Switchboard whatever the number of workers: counters, histograms and most gauges (calls
active, tasks, threads, memory) are sums. A few gauges are not: `ready` is 1 only when
every process is ready (minimum), and a `*_created` timestamp is the earliest. A series a
process lacks counts as absent, not zero.
Pure: text in, text out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

__all__ = ["MIN_GAUGES", "merge_expositions"]

# Gauges whose merged value is the smallest, not the sum (process_* and python_* are
# prometheus_client's own: memory, CPU and fds add up; these do not).
MIN_GAUGES = frozenset({"switchboard_ready", "process_start_time_seconds", "process_max_fds",
                        "python_info"})


class _Merged:
    """What generate_latest needs: something with collect()."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _families(texts: Iterable[str]) -> Iterator[Metric]:
    for text in texts:
        yield from text_string_to_metric_families(text)


def merge_expositions(texts: Sequence[str]) -> bytes:
    """Sum the series of these expositions (text format 0.0.4) into one exposition.
    Raises ValueError on text that is not an exposition."""
    order: list[str] = []
    kinds: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in _families(texts):
        name = family.name
        if name not in kinds:
            kinds[name] = Metric(name, family.documentation, family.type, family.unit)
            values[name] = {}
            order.append(name)
        elif kinds[name].type != family.type:
            raise ValueError(f"metric {name} is a {kinds[name].type} in one process and a "
                             f"{family.type} in another")
        series = values[name]
        keep_min = family.type == "gauge" and name in MIN_GAUGES
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            old = series.get(key)
            if old is None:
                series[key] = s.value
            elif keep_min or s.name.endswith("_created"):
                series[key] = min(old, s.value)
            else:
                series[key] = old + s.value
    merged = []
    for name in order:
        family = kinds[name]
        family.samples = [Sample(sample, dict(labels), value)
                          for (sample, labels), value in values[name].items()]
        merged.append(family)
    return generate_latest(_Merged(merged))  # type: ignore[arg-type]
