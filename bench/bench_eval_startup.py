"""Start-up cost of `scalelab eval`: two source trees side by side, whole processes, interleaved.

    git worktree add /tmp/wt-before HEAD~N          # the code to compare against
    .venv/bin/python bench/bench_eval_startup.py RUN --before /tmp/wt-before/src \\
        [--after src] [--tasks arc_easy] [--limit 20] [--repeats 5]

Runs `python -m scalelab eval RUN --tasks T --limit N --quiet` with PYTHONPATH pointing at
each tree, alternating before/after `--repeats` times, and prints the median wall time and
CPU time (user + sys of the child) of each, and their ratio. A third variant, "after +
meta-Embedding", runs the after tree with nn.Embedding's init skipped for meta-device weights
(what GPT.__init__ builds on meta and re-initialises anyway): a meta-device normal_ imports
torch._dynamo, so this estimates what not initialising the meta embedding would save.
Also prints `python -c "import scalelab.eval.stats"` CPU time for each tree (the scipy import).
Times are load-sensitive: the ratio of interleaved medians is what to compare; report `uptime`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

SKIP_META_EMBEDDING_INIT = (
    "import torch.nn as nn; _rp = nn.Embedding.reset_parameters\n"
    "nn.Embedding.reset_parameters = lambda self: None if self.weight.is_meta else _rp(self)\n"
)


def timed(cmd: list[str], src: str) -> tuple[float, float]:
    """(wall s, child CPU s) of one process with PYTHONPATH=src."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(src), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({' '.join(cmd)}):\n{err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a scalelab run dir to evaluate")
    ap.add_argument("--before", required=True, help="src/ of the tree to compare against")
    ap.add_argument("--after", default="src")
    ap.add_argument("--tasks", default="arc_easy")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    out = tempfile.mkdtemp(prefix="bench-eval-startup-")
    argv = ["eval", a.run, "--tasks", a.tasks, "--limit", str(a.limit), "--quiet", "--out", out]
    runner = "import sys, runpy; sys.argv = ['scalelab'] + sys.argv[1:]; runpy.run_module('scalelab', run_name='__main__')"
    variants = {
        "before": ([sys.executable, "-m", "scalelab", *argv], a.before),
        "after": ([sys.executable, "-m", "scalelab", *argv], a.after),
        "after + meta-Embedding": ([sys.executable, "-c", SKIP_META_EMBEDDING_INIT + runner, *argv], a.after),
        "import stats, before": ([sys.executable, "-c", "import scalelab.eval.stats"], a.before),
        "import stats, after": ([sys.executable, "-c", "import scalelab.eval.stats"], a.after),
    }
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    for name, (cmd, src) in variants.items():  # warm-up, not counted: writes each tree's .pyc files
        timed(cmd, src)
    for r in range(a.repeats):
        for name, (cmd, src) in variants.items():
            times[name].append(timed(cmd, src))
        print(f"repeat {r + 1}/{a.repeats} done", flush=True)
    print(f"load after: {os.getloadavg()[0]:.2f}")
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}
    best = {k: min(c for _, c in v) for k, v in times.items()}
    print(f"\n{'variant':26s} {'wall s':>8s} {'CPU s':>8s} {'min CPU s':>10s}  (median / min of {a.repeats})")
    for k, (w, c) in med.items():
        print(f"{k:26s} {w:8.2f} {c:8.2f} {best[k]:10.2f}")
    b = med["before"]
    for k in ("after", "after + meta-Embedding"):
        print(f"before / {k}: wall {b[0] / med[k][0]:.2f}x, CPU {b[1] / med[k][1]:.2f}x; "
              f"saved {b[0] - med[k][0]:.2f} s wall, {b[1] - med[k][1]:.2f} s CPU "
              f"(min CPU: {best['before'] - best[k]:.2f} s)")


if __name__ == "__main__":
    main()
