"""A bounded schemathesis run over the server's own OpenAPI schema (every route, bodies generated from the request
models, valid and invalid): no 5xx, no hang (a call over HANG_SECONDS). ``PAGEDLLM_LOAD_FULL=1``: more examples."""
from __future__ import annotations

import pytest

from load_utils import FULL, MODEL, RemoteServer

schemathesis = pytest.importorskip("schemathesis", reason="pip install pagedllm[test] (schemathesis)")
requests = pytest.importorskip("requests")

EXAMPLES_PER_OPERATION = 40 if FULL else 5
HANG_SECONDS = 60


def test_openapi_fuzz_no_5xx_no_hang():
    from hypothesis import HealthCheck, given, settings

    # Short context and small caps: a generated request that is valid runs in about a second on the CPU.
    server = RemoteServer(["serve", MODEL, "--max-model-len", "64", "--max-n", "2", "--max-num-seqs", "8",
                           "--num-gpu-blocks-override", "64", "--max-logprobs", "2", "--seed", "0",
                           "--disable-uvicorn-access-log"]).wait_ready()
    failures: list[str] = []
    counts = {"cases": 0, "5xx": 0, "hangs": 0, "operations": 0}
    try:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        for result in schema.get_all_operations():
            operation = result.ok()
            counts["operations"] += 1

            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy())
            def call(case) -> None:
                counts["cases"] += 1
                try:
                    response = case.call(base_url=server.url, timeout=HANG_SECONDS)
                except requests.Timeout:
                    counts["hangs"] += 1
                    failures.append(f"hang: {case.method} {case.path} {case.body!r}"[:500])
                    return
                if response.status_code >= 500:
                    counts["5xx"] += 1
                    failures.append(f"{response.status_code}: {case.method} {case.path} {case.body!r} -> "
                                    f"{response.text[:200]}"[:600])

            call()
        alive = server.proc.poll() is None
    finally:
        server.stop()
    print(f"\nLOAD fuzz operations={counts['operations']} cases={counts['cases']} 5xx={counts['5xx']} "
          f"hangs={counts['hangs']}")
    assert alive, "the server died during the fuzz run"
    assert counts["cases"] >= counts["operations"] >= 10
    assert not failures, "\n".join(failures[:20])
