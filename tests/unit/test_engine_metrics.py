"""EngineMetrics: the per-step and per-request histograms vLLM's dashboards query, fed synthetic outputs with exact
timestamps (no engine)."""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from pagedllm.engine.messages import EngineSnapshot
from pagedllm.engine.scheduler import StepStats
from pagedllm.metrics import EngineMetrics
from pagedllm.outputs import CompletionOutput, RequestMetrics, RequestOutput
from pagedllm.sampling_params import RequestOutputKind, SamplingParams


def _output(tokens: int, finished: bool, scheduled: float) -> RequestOutput:
    completion = CompletionOutput(0, "x" * tokens, list(range(tokens)), None, None,
                                  finish_reason="length" if finished else None)
    return RequestOutput("r", None, [1, 2, 3], None, [completion], finished,
                         metrics=RequestMetrics(arrival_time=10.0, first_scheduled_time=scheduled))


def _samples(text: str) -> dict[str, dict]:
    """{family name: {(sample name, le): value}}."""
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        out[family.name] = {(s.name, s.labels.get("le")): s.value for s in family.samples}
        out[family.name]["type"] = family.type
    return out


def test_vllm_request_and_iteration_histograms():
    metrics = EngineMetrics("m", log_stats=False)
    metrics.attach(lambda: EngineSnapshot())
    params = SamplingParams(n=2, max_tokens=7, output_kind=RequestOutputKind.DELTA)
    metrics.on_request_added("r", params, arrival_time=10.0, num_prompt_tokens=3)
    snap = EngineSnapshot()
    metrics.on_step(StepStats(num_prompt_tokens=3, num_generation_tokens=0), [], snap, 10.5)
    metrics.on_step(StepStats(num_prompt_tokens=0, num_generation_tokens=2), [_output(1, False, 10.5)], snap, 11.0)
    metrics.on_step(StepStats(num_prompt_tokens=0, num_generation_tokens=2), [_output(1, True, 10.5)], snap, 13.0)
    got = _samples(metrics.render().decode())

    it = got["pagedllm:iteration_tokens_total"]
    assert it["type"] == "histogram"
    assert it[("pagedllm:iteration_tokens_total_count", None)] == 3
    assert it[("pagedllm:iteration_tokens_total_sum", None)] == 7
    assert it[("pagedllm:iteration_tokens_total_bucket", "1.0")] == 0
    assert it[("pagedllm:iteration_tokens_total_bucket", "8.0")] == 3
    n = got["pagedllm:request_params_n"]
    assert n[("pagedllm:request_params_n_count", None)] == 1 and n[("pagedllm:request_params_n_sum", None)] == 2
    mt = got["pagedllm:request_params_max_tokens"]
    assert mt[("pagedllm:request_params_max_tokens_sum", None)] == 7
    # scheduled at 10.5, first token at 11.0, last at 13.0
    for name, seconds in (("request_prefill_time_seconds", 0.5), ("request_decode_time_seconds", 2.0),
                          ("request_inference_time_seconds", 2.5), ("request_queue_time_seconds", 0.5),
                          ("e2e_request_latency_seconds", 3.0), ("time_to_first_token_seconds", 1.0)):
        family = got["pagedllm:" + name]
        assert family["type"] == "histogram"
        assert family[(f"pagedllm:{name}_count", None)] == 1
        assert abs(family[(f"pagedllm:{name}_sum", None)] - seconds) < 1e-9, name


def test_pooling_requests_are_counted():
    """Pooling outputs (no completions, no RequestMetrics) finish as 'stop' successes; every one of a step's outputs
    is recorded (an AttributeError on the first used to drop the step's metrics, logged as an ERROR per request)."""
    from pagedllm.outputs import PoolingOutput, PoolingRequestOutput
    from pagedllm.pooling_params import PoolingParams
    import torch
    metrics = EngineMetrics("m", log_stats=False)
    metrics.attach(lambda: EngineSnapshot())
    for rid in ("a", "b"):
        metrics.on_request_added(rid, PoolingParams(task="embed"), arrival_time=1.0, num_prompt_tokens=4)
    outs = [PoolingRequestOutput(rid, PoolingOutput(torch.zeros(4)), [1, 2, 3, 4]) for rid in ("a", "b")]
    metrics.on_step(StepStats(num_prompt_tokens=8), outs, EngineSnapshot(), 1.5)
    got = _samples(metrics.render().decode())
    success = got["pagedllm:request_success"]
    assert success[("pagedllm:request_success_total", None)] == 2
    e2e = got["pagedllm:e2e_request_latency_seconds"]
    assert e2e[("pagedllm:e2e_request_latency_seconds_count", None)] == 2
    assert got["pagedllm:request_params_n"][("pagedllm:request_params_n_count", None)] == 0
