"""The Dockerfile and .dockerignore: a small build context (no .venv, .git, caches, builds), a GPU image by default
and a CPU image with --build-arg DEVICE=cpu. The images are built only where a Docker daemon answers."""
from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(name: str) -> str:
    with open(os.path.join(REPO, name)) as f:
        return f.read()


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in read(".dockerignore").splitlines()]
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(path: str) -> bool:
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.split("/")[0], p) for p in ignore_patterns())


def test_dockerignore_keeps_large_and_local_files_out():
    for path in (".venv", ".git", "dist", "build", "pagedllm.egg-info", ".bench", "pagedllm-0.1.0-py3-none-any.whl",
                 ".pytest_cache"):
        assert ignored(path), path


def test_dockerfile_copies_only_what_the_context_keeps():
    sources = []
    for line in read("Dockerfile").splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    assert sources == ["pyproject.toml", "README.md", "pagedllm"]
    for src in sources:
        assert os.path.exists(os.path.join(REPO, src)) and not ignored(src), src


def test_dockerfile_gpu_default_and_cpu_target():
    text = read("Dockerfile")
    assert re.search(r"^ARG DEVICE=gpu$", text, re.M)
    stages = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    names = [name for _, name in stages]
    assert names == ["base-gpu", "base-cpu", "server"]
    assert stages[-1][0] == "base-${DEVICE}"
    assert "download.pytorch.org/whl/cpu" in text       # the CPU image does not pull CUDA torch
    assert 'ENTRYPOINT ["pagedllm", "serve"' in text


def docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not docker_daemon(), reason="no Docker daemon here")
@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_docker_build(device):
    result = subprocess.run(["docker", "build", "--build-arg", f"DEVICE={device}", "-t", f"pagedllm-test-{device}",
                             REPO], capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
