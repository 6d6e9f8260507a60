"""``vllm.v1.metrics.reader`` (the types of ``LLM.get_metrics()``'s items, which examples check with isinstance):
pagedllm/metrics_reader.py's classes."""
from pagedllm.metrics_reader import Counter, Gauge, Histogram, Metric, Vector

__all__ = ["Counter", "Gauge", "Histogram", "Metric", "Vector"]
