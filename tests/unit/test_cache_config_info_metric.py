"""vLLM's ``cache_config_info`` series on /metrics: the engine's cache config as labels of a gauge set to 1, there
from start-up (dashboards and routers read the KV cache's size from it before any request)."""
from __future__ import annotations

import re

from app_client import run_on, serve_in_process


def test_cache_config_info_names_the_kv_cache_at_start_up(tiny_llama_dir):
    with serve_in_process(tiny_llama_dir, "--block-size", "32", "--swap-space", "0.01") as (app, engine):
        async def scrape(client):
            return (await client.get("/metrics")).text
        text = run_on(app, scrape)              # no request has run yet
        cache = engine.config.cache_config
        assert cache.num_gpu_blocks and cache.num_gpu_blocks > 0
        (line,) = [ln for ln in text.splitlines() if ln.startswith("pagedllm:cache_config_info{")]
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        # vLLM's labels: each cache-config field as str(value); the value is 1.
        assert labels["num_gpu_blocks"] == str(cache.num_gpu_blocks)
        assert labels["block_size"] == "32" and labels["cache_dtype"] == "auto"
        assert labels["enable_prefix_caching"] == "True" and labels["num_cpu_blocks"] == str(cache.num_cpu_blocks)
        assert labels["gpu_memory_utilization"] == "0.9" and line.endswith(" 1.0")
        # vLLM's CacheConfig fields for the CPU tier and the sizing knobs (were missing from the labels).
        assert (labels["kv_offloading_size"], labels["kv_offloading_backend"]) == ("None", "native")
        assert labels["num_gpu_blocks_override"] == "None" and labels["prefix_caching_hash_algo"] == "sha256"
