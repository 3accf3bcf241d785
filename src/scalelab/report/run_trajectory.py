"""The learning trajectory in the run report: the per-checkpoint table (BENCHMARK.md), the
published baselines beside it, and the sentences MODEL_CARD.md / WRITEUP.md cite.

Rows come from `scalelab eval RUN --checkpoints ...` (RUN/eval/checkpoints/, read by
scalelab.eval.trajectory.load_trajectory into RunFiles.trajectory); nothing is recomputed.
"""
from __future__ import annotations

from typing import Any

from scalelab.report.markdown import intc
from scalelab.report.numbers import finite as _ok, num as _num
from scalelab.report.run_baselines import baseline_value
from scalelab.report.run_files import RunFiles, _ci, _table, task_facts
FIGURE = "TRAJECTORY.png"


def trajectory_tasks(rows: list[dict[str, Any]]) -> list[str]:
    """Tasks in the trajectory, the default set first, then the rest by name."""
    from scalelab.eval.trajectory import DEFAULT_TASKS

    seen = {t for r in rows for t in (r.get("results") or {}) if t != "lm"}
    return [t for t in DEFAULT_TASKS if t in seen] + sorted(seen - set(DEFAULT_TASKS))


def series(rows: list[dict[str, Any]], task: str, metric: str) -> list[tuple[int, int, float, list | None, int]]:
    """(step, tokens, value, ci, n) of one metric over the checkpoints that have it."""
    out = []
    for r in rows:
        res = (r.get("results") or {}).get(task)
        if isinstance(res, dict) and _ok(res.get(metric)):
            out.append((r.get("step"), r.get("tokens"), _num(res[metric]), res.get(f"{metric}_ci"), res.get("n")))
    return out


def table_markdown(run: RunFiles, baselines: dict[str, Any] | None) -> list[str]:
    """BENCHMARK.md's '## Learning trajectory' section."""
    facts = task_facts()
    rows = run.trajectory
    L = ["## Learning trajectory: one row per checkpoint", ""]
    if not rows:
        return L + [f"No per-checkpoint evaluation yet: run `scalelab eval {run.dir} --checkpoints all` (keep "
                    "checkpoints with `train.ckpt_keep_every`), then `scalelab report RUN` again.", ""]
    tasks = trajectory_tasks(rows)
    head = ["step", "tokens", "val loss", "perplexity", "bits/byte"] + \
        [f"{facts.task_label(t)} {facts.headline_metric(t)}" for t in tasks]
    table = []
    for r in rows:
        res = r.get("results") or {}
        lm = res.get("lm") if isinstance(res.get("lm"), dict) else {}
        cells = [intc(r.get("step")), intc(r.get("tokens")), _ci(lm.get("loss"), lm.get("loss_ci")),
                 _ci(lm.get("ppl"), lm.get("ppl_ci"), 2), _ci(lm.get("bpb"), lm.get("bpb_ci"))]
        for t in tasks:
            m = res.get(t) or {}
            cells.append(_ci(m.get(facts.headline_metric(t)), m.get(f"{facts.headline_metric(t)}_ci")))
        table.append(cells)
    L += _table(head, table)
    s = rows[-1].get("settings") or {}
    n = {t: (rows[-1].get("results") or {}).get(t, {}).get("n") for t in tasks}
    lm_cfg = s.get("lm") or {}
    L += ["", f"{len(rows)} checkpoints from `eval/checkpoints/` (`scalelab eval RUN --checkpoints`), each "
          "with the same inputs: validation loss / perplexity / bits per byte on the first "
          f"{intc(lm_cfg.get('max_tokens'))} tokens of `{lm_cfg.get('source')}` ({lm_cfg.get('split')} split; 95% "
          "bootstrap CIs over windows), and each task on one fixed seeded subset ("
          + ", ".join(f"{facts.task_label(t)} n={intc(n[t])}" for t in tasks)
          + f", seed {s.get('seed')}; 95% Wilson CIs), 0-shot, lm-evaluation-harness formatting. Chance: "
          + ", ".join(f"{facts.task_label(t)} {c:.2f}" for t in tasks if (c := facts.chance_level(t)) is not None)
          + f". Figure: {FIGURE} (metrics vs tokens seen, CI bands); LOSS_CURVE.png marks these checkpoints.", ""]
    L += baselines_markdown(tasks, baselines)
    return L


def baseline_points(tasks: list[str], baselines: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Published numbers for the trajectory's task metrics (and LAMBADA acc), with their source."""
    out = []
    models = (baselines or {}).get("models") or {}
    for key, m in models.items():
        for task in list(tasks) + (["lambada"] if "lambada" not in tasks else []):
            metric = task_facts().headline_metric(task)
            e = ((m.get("results") or {}).get(task) or {}).get(metric)
            if e and _ok(e.get("value")):
                out.append({"model": m.get("name", key), "task": task, "metric": metric, "value": _num(e["value"]),
                            "stderr": e.get("stderr"), "n": e.get("n"), "split": e.get("split"),
                            "source": e.get("source")})
    return out


def baselines_markdown(tasks: list[str], baselines: dict[str, Any] | None) -> list[str]:
    L = ["### Published models of similar size (final checkpoints)", ""]
    pts = baseline_points(tasks, baselines)
    if not pts:
        return L + ["No published number for these tasks in the baselines file "
                    "(scalelab/assets/baselines.json or $SCALELAB_BASELINES).", ""]
    srcs = (baselines or {}).get("sources") or {}
    rows = []
    for p in pts:
        v, se, _ = baseline_value(p)
        rows.append([p["model"], f"{task_facts().task_label(p['task'])} {p['metric']}",
                     f"{v:.4f}" + (f" ± {se:.4f}" if se is not None else ""), f"{p['split']}, n={intc(p['n'])}",
                     p["source"] + (f" ({srcs[p['source']]['url']})" if srcs.get(p["source"], {}).get("url") else "")])
    L += _table(["model", "task metric", "value ± stderr", "split", "source"], rows)
    L += ["", "These are end-of-training numbers of models that saw far more tokens (Pythia: 300B) of other data "
          "(the Pile, WebText); they are where the curves above are heading, not points on them. Only numbers "
          "traced to a source file are listed: Pythia-160M's PIQA and ARC-Easy (quoted elsewhere as 0.627 and "
          "0.435) are left out because EleutherAI's evaluation file for that checkpoint was not available to "
          "cite (see the sources below).", ""]
    return L


def trajectory_sentences(run: RunFiles) -> list[str]:
    """What the trajectory shows, for MODEL_CARD.md and WRITEUP.md (empty without one)."""
    facts = task_facts()
    rows = run.trajectory
    if not rows:
        return []
    a, b = rows[0], rows[-1]
    out = [f"Learning trajectory: {len(rows)} checkpoints evaluated, from step {intc(a.get('step'))} "
           f"({intc(a.get('tokens'))} tokens) to step {intc(b.get('step'))} ({intc(b.get('tokens'))} tokens); "
           f"the per-checkpoint table is in BENCHMARK.md and the curves in {FIGURE}."]
    loss = series(rows, "lm", "loss")
    if len(loss) >= 2:
        out.append(f"Validation loss along it: {_ci(loss[0][2], loss[0][3])} at step {intc(loss[0][0])} → "
                   f"{_ci(loss[-1][2], loss[-1][3])} at step {intc(loss[-1][0])}.")
    for t in trajectory_tasks(rows):
        s = series(rows, t, facts.headline_metric(t))
        if not s:
            continue
        ch = facts.chance_level(t)
        last_ci = s[-1][3]
        above = ch is not None and isinstance(last_ci, list) and _ok(last_ci[0]) and _num(last_ci[0]) > ch
        out.append(f"{facts.task_label(t)} {facts.headline_metric(t)}: {_ci(s[0][2], s[0][3])} at step {intc(s[0][0])} → "
                   f"{_ci(s[-1][2], s[-1][3])} at step {intc(s[-1][0])} (n={intc(s[-1][4])}; chance "
                   f"{ch if ch is not None else 'n/a'}"
                   + ("; the last CI excludes chance)." if above else "; the last CI includes chance).")
                   if ch is not None else ").")
    return out


def samples_sentence(run: RunFiles, info: dict[str, Any] | None) -> str | None:
    """The SAMPLES.md trajectory, for MODEL_CARD.md and WRITEUP.md."""
    if not info or not info.get("ok") or not info.get("steps"):
        return None
    steps = info["steps"]
    return (f"SAMPLES.md follows the {info['prompts']} fixed prompts through {len(steps)} checkpoints (steps "
            f"{', '.join(intc(s) for s in steps)}), same seed and decoding at each ({info['source']}).")


def figure_panels(run: RunFiles, baselines: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The panels of TRAJECTORY.png (run_plots.plot_trajectory); [] without a trajectory."""
    facts = task_facts()
    rows = run.trajectory
    panels = []
    for metric, label in (("loss", "validation loss (nats/token)"), ("bpb", "validation bits/byte")):
        pts = [(tok, v, ci) for _, tok, v, ci, _ in series(rows, "lm", metric)]
        if pts:
            panels.append({"ylabel": label, "lines": [{"label": f"{label} [95% CI]", "points": pts}]})
    tasks = trajectory_tasks(rows)
    lines, hlines = [], []
    for j, t in enumerate(tasks):
        pts = [(tok, v, ci) for _, tok, v, ci, _ in series(rows, t, facts.headline_metric(t))]
        if not pts:
            continue
        lines.append({"label": f"{facts.task_label(t)} {facts.headline_metric(t)}", "points": pts})
        if facts.chance_level(t) is not None:
            hlines.append({"y": facts.chance_level(t), "label": f"chance ({facts.task_label(t)})", "style": ":",
                           "color": f"C{len(lines) - 1}"})
        for p in baseline_points([t], baselines):
            if p["task"] == t:
                hlines.append({"y": p["value"], "label": f"{p['model']} {facts.task_label(t)}", "style": "--",
                               "color": f"C{len(lines) - 1}"})
    if lines:
        panels.append({"ylabel": "zero-shot accuracy", "lines": lines, "hlines": hlines})
    return panels
