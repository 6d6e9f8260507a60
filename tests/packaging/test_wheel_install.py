"""The wheel and sdist: built from a copy of the source (offline, no build isolation), the wheel installed with
--no-deps into a fresh venv that borrows this venv's dependencies; `pagedllm` is then the installed package (not this
checkout) and `pagedllm serve` answers. About 30 s on the CI machine."""
from __future__ import annotations

import glob
import os
import shutil
import site
import subprocess
import sys
import tarfile
import time
import zipfile

import httpx
import pytest
from ports import free_port  # tests/ports.py

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.packaging


def run(cmd: list[str], cwd: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def clean_env():
    """No PYTHONPATH (it would put a checkout ahead of the installed package)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory, clean_env):
    """Wheel and sdist of a copy of the source (so build/ and *.egg-info stay out of the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), src)
    shutil.copytree(os.path.join(REPO, "pagedllm"), src / "pagedllm",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        cwd=str(src), env=clean_env)
    run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(out)!r})"],
        cwd=str(src), env=clean_env)
    return out


def test_wheel_and_sdist_contents(dist_dir):
    import pagedllm
    (wheel,) = glob.glob(str(dist_dir / "pagedllm-*.whl"))
    assert os.path.basename(wheel) == f"pagedllm-{pagedllm.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "pagedllm/__init__.py" in names and "pagedllm/entrypoints/openai/api_server.py" in names
    assert not any(n.startswith("tests/") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(f"pagedllm-{pagedllm.__version__}.dist-info/entry_points.txt")
    assert b"pagedllm = pagedllm.entrypoints.cli:main" in entry_points
    (sdist,) = glob.glob(str(dist_dir / "pagedllm-*.tar.gz"))
    members = tarfile.open(sdist).getnames()
    root = f"pagedllm-{pagedllm.__version__}"
    assert {f"{root}/pyproject.toml", f"{root}/README.md", f"{root}/pagedllm/__init__.py"} <= set(members)


def test_wheel_installs_and_serves(dist_dir, tmp_path, clean_env):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=str(tmp_path), env=clean_env)
    python = str(venv / "bin" / "python")
    # Borrow this venv's installed dependencies (torch, transformers, the bundled model) by a plain path entry: the
    # path's own .pth files (this checkout's editable install) are not run, so `pagedllm` can only come from the wheel.
    venv_site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=str(tmp_path), env=clean_env).stdout.strip()
    with open(os.path.join(venv_site, "borrowed_deps.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    (wheel,) = glob.glob(str(dist_dir / "pagedllm-*.whl"))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
        cwd=str(tmp_path), env=clean_env)

    where = run([python, "-c", "import pagedllm; print(pagedllm.__file__)"], cwd=str(tmp_path), env=clean_env)
    assert where.stdout.strip().startswith(venv_site), where.stdout
    cli = str(venv / "bin" / "pagedllm")
    assert "serve" in run([cli, "--help"], cwd=str(tmp_path), env=clean_env).stdout

    port = free_port()
    log = open(tmp_path / "serve.log", "w+")
    server = subprocess.Popen([cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "256",
                               "--kv-cache-memory-gb", "0.05", "--disable-uvicorn-access-log"],
                              cwd=str(tmp_path), env=clean_env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            assert server.poll() is None, open(tmp_path / "serve.log").read()[-3000:]
            assert time.time() < deadline, "the wheel's server did not become healthy"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                       json={"prompt": "San Francisco is a", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith(" city")
    finally:
        os.killpg(server.pid, 15)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, 9)
            server.wait()
        log.close()
