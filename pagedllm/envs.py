"""PLACEHOLDER until helper A's envs.py is merged."""
import os


def __getattr__(name):
    if name == "PAGEDLLM_LOGGING_LEVEL":
        return os.environ.get(name, "INFO")
    if name == "PAGEDLLM_CONFIGURE_LOGGING":
        return os.environ.get(name, "1").strip().lower() not in ("0", "false", "no", "off")
    if name == "PAGEDLLM_STEP_TRACE":
        return os.environ.get(name, "").strip() or None
    if name == "PAGEDLLM_ENGINE_START_METHOD":
        return os.environ.get(name) or None
    raise AttributeError(name)
