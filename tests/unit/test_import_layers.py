"""Imports run one way: entrypoints -> engine -> worker -> model -> attention -> kernels, with the plain-data modules
(config, envs, sampling_params, outputs, step_data, logger) at the bottom. Every import in the package's source is
checked, those inside functions and under TYPE_CHECKING too (a lazy import is still a dependency), and so is the
absence of import cycles between modules."""
from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "pagedllm"

# Rank of each top-level module / package of pagedllm: a module may import its own rank or lower.
LAYERS = {
    "envs": 0, "config": 0, "sampling_params": 0, "pooling_params": 0, "outputs": 0, "step_data": 0, "logger": 0,
    "gc_heap": 0, "inputs": 0, "utils": 0,     # vLLM's example helpers (vllm.utils.*), re-exported
    "logprobs": 0, "beam_search": 0,    # vLLM's vllm.logprobs / vllm.beam_search paths to outputs' types
    "harmony": 0,       # gpt-oss's harmony messages read from text: the reasoning and tool parsers use it
    "reasoning_parsers": 0,     # plain data: the config checks the name, the engine gates grammars, the server splits
    "usage": 0,     # vLLM's vllm.usage.usage_lib.UsageContext: an enum the config's defaults read
    "kernels": 1, "distributed": 1,     # tensor-parallel group state: the model's parallel layers use it
    "attention": 2, "lora": 2,      # LoRA adapters: the request (engine), slots (model), manager (worker)
    "model": 3,
    "worker": 4,
    "engine": 5, "metrics": 5, "metrics_reader": 5,
    "v1": 5,    # vLLM's vllm.v1.engine import paths, aliases of engine's classes
    "entrypoints": 6, "bench": 6, "benchmarks": 6,     # benchmarks: vLLM's vllm.benchmarks paths over bench      # `pagedllm bench` is a subcommand of the CLI; benchmarks drive LLM
    "__init__": 8,
}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every pagedllm module ``path`` imports (``from pagedllm.x import y`` counts as pagedllm.x.y when that is a
    module, else pagedllm.x)."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "pagedllm" or not name.startswith("pagedllm."):
                continue
            if name in MODULES:
                found.add(name)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__"] if len(parts) == 1 else LAYERS[parts[1]]


FILES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module_name(p): p for p in FILES}


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in MODULES if "." in m and m.split(".")[1] not in LAYERS})
    assert not missing, f"new top-level modules need a rank in LAYERS: {missing}"


def test_no_upward_import():
    upward = []
    for module, path in MODULES.items():
        for target in _imports(path):
            if target != module and _layer(target) > _layer(module) and not module.startswith(target + "."):
                upward.append(f"{module} (rank {_layer(module)}) imports {target} (rank {_layer(target)})")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    graph = {m: {t for t in _imports(p) if t != m and not m.startswith(t + ".")} for m, p in MODULES.items()}
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_check_sees_a_lazy_upward_import(tmp_path):
    """The walker finds imports inside functions (config -> model.loader was one)."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from pagedllm.model.loader import resolve_model\n")
    assert "pagedllm.model.loader" in _imports(src)
