"""``LLM.get_metrics()``: the engine's Prometheus series as plain objects (vLLM's ``vllm.v1.metrics.reader``): one
``Counter`` / ``Gauge`` / ``Histogram`` per series and label set, named as on ``/metrics`` (``pagedllm:`` prefix).
``Vector`` is vLLM's per-position speculative-decoding counter (``spec_decode_num_accepted_tokens_per_pos``, with
speculative_config)."""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry


@dataclass
class Metric:
    """A series: its name and its labels (one name may come with several label sets)."""
    name: str
    labels: dict[str, str]


@dataclass
class Counter(Metric):
    """A count that only grows."""
    value: int


@dataclass
class Vector(Metric):
    """An ordered array of integer counters."""
    values: list[int]


@dataclass
class Gauge(Metric):
    """A value that goes up and down."""
    value: float


@dataclass
class Histogram(Metric):
    """Observations in buckets: ``buckets`` maps each upper limit ("0.5", ..., "+Inf") to the cumulative count of
    observations up to it; ``count`` is the "+Inf" bucket's, ``sum`` the total of the observed values."""
    count: int
    sum: float
    buckets: dict[str, int]


def metrics_snapshot(registry: CollectorRegistry, prefix: str) -> list[Metric]:
    """Every gauge, counter and histogram of ``registry`` whose name starts with ``prefix``, as they stand now."""
    collected: list[Metric] = []
    for family in registry.collect():
        if not family.name.startswith(prefix):
            continue
        if family.type == "gauge":
            collected.extend(Gauge(family.name, dict(s.labels), s.value) for s in family.samples
                             if s.name == family.name)
        elif family.type == "counter" and family.name.endswith("spec_decode_num_accepted_tokens_per_pos"):
            # vLLM's reader: the per-position counters of one label set as one Vector, position 0 first.
            vectors: dict[frozenset, dict[int, int]] = {}
            for s in family.samples:
                if s.name == family.name + "_total":
                    labels = {k: v for k, v in s.labels.items() if k != "position"}
                    vectors.setdefault(frozenset(labels.items()), {})[int(s.labels["position"])] = int(s.value)
            collected.extend(Vector(family.name, dict(key), [v[p] for p in sorted(v)]) for key, v in vectors.items())
        elif family.type == "counter":
            collected.extend(Counter(family.name, dict(s.labels), int(s.value)) for s in family.samples
                             if s.name == family.name + "_total")
        elif family.type == "histogram":
            series: dict[frozenset, Histogram] = {}
            for s in family.samples:
                labels = {k: v for k, v in s.labels.items() if k != "le"}
                h = series.setdefault(frozenset(labels.items()), Histogram(family.name, labels, 0, 0.0, {}))
                if s.name == family.name + "_bucket":
                    h.buckets[s.labels["le"]] = int(s.value)
                elif s.name == family.name + "_count":
                    h.count = int(s.value)
                elif s.name == family.name + "_sum":
                    h.sum = s.value
            collected.extend(series.values())
    return collected
