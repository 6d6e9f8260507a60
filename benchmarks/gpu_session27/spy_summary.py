"""Read py-spy's raw (collapsed) output of a start-up and print, per process and thread, a tree of where the wall
time went: frames with at least MIN seconds, importlib's own frames folded away (a module's top level reads as
"import path"). Recorded with --idle, so a thread's samples / rate = its wall seconds in each frame.

    python benchmarks/gpu_session27/spy_summary.py spy_raw.txt [--rate 200] [--min 0.2] [--depth 14]
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict


def fold(frame: str) -> str | None:
    if "<frozen importlib" in frame or "<frozen zipimport" in frame:
        return None
    m = re.match(r"<module> \((.*):\d+\)$", frame)
    if m:
        return "import " + m.group(1)
    return re.sub(r":\d+\)$", ")", frame)      # line numbers split one function into many nodes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--min", type=float, default=0.2)
    ap.add_argument("--depth", type=int, default=14)
    a = ap.parse_args()
    trees: dict = defaultdict(lambda: [0, {}])
    for line in open(a.path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        parts = stack.split(";")
        i = 0
        while parts[i].startswith("process "):      # --subprocesses: the parent chain, then the process itself
            i += 1
        proc = re.sub(r'"(.{60}).*"', r'"\1..."', parts[i - 1])
        thread = re.sub(r"^thread \((\d+)\).*", r"thread \1", parts[i])     # named in some samples only
        node = trees[(proc, thread)]
        node[0] += int(count)
        for f in parts[i + 1:]:
            f = fold(f)
            if f is None:
                continue
            node = node[1].setdefault(f, [0, {}])
            node[0] += int(count)

    def show(children: dict, depth: int, indent: str) -> None:
        if depth > a.depth:
            return
        for name, (n, sub) in sorted(children.items(), key=lambda kv: -kv[1][0]):
            if n / a.rate < a.min:
                continue
            # a chain of frames that hold the same samples is printed as one line ("a > b > c")
            names = [name]
            while len(sub) == 1 and next(iter(sub.values()))[0] == n:
                (child, (_, sub)), = sub.items()
                names.append(child)
            line = names[0] if len(names) <= 2 else f"{names[0]} > ... > {names[-1]}"
            print(f"{indent}{n / a.rate:6.2f} s  {line}")
            show(sub, depth + 1, indent + "  ")

    for (proc, thread), (n, sub) in sorted(trees.items(), key=lambda kv: -kv[1][0]):
        if n / a.rate < a.min:
            continue
        print(f"== {proc} {thread}: {n / a.rate:.2f} s")
        show(sub, 1, "  ")


if __name__ == "__main__":
    main()
