"""`scalelab golf`: train under a wall-clock cap, quantize, compress, measure, reload, score.

`run_golf(run_cfg, golf_cfg)` is the library entry point. Steps:

1. check that the model can plausibly fit the budget (`golf.precheck`), then train with
   the normal trainer (`train.max_time_s` is the cap; a wsd schedule decays by time);
2. take the final weights (EMA or raw), evaluate val_bpb on the full validation split;
3. quantize (golf.quant / quant_overrides / clip; golf.quant_method=gptq calibrates each
   linear layer's Hessian on training tokens first), pack, compress with every compressor
   and keep the smallest; write the artifact (code files + weights file);
4. read the weights file back from disk, rebuild the model from those bytes alone, check
   the dequantized tensors are bit-identical to the in-memory ones, and evaluate val_bpb
   again (and with a sliding window when golf.sliding_stride is set);
5. write golf.json + GOLF.md into out_dir; raise BudgetError (exit status 2 from the
   CLI) when code + weights exceed golf.budget_bytes.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from scalelab.config import RunConfig
from scalelab.errors import ScalelabError
from scalelab.golf import codec
from scalelab.golf.artifact import BudgetError, check_budget, write_artifact  # noqa: F401 (BudgetError re-exported)
from scalelab.golf.layout import build_weights
from scalelab.golf.config import GolfConfig, to_dict
from scalelab.golf.estimate import estimate_bytes, precheck  # noqa: F401 (re-exported)
from scalelab.golf.evaluate import ByteCounter, evaluate_bpb, load_split_tokens, resolve_tokenizer
from scalelab.io import atomic_write_json, atomic_write_text, git_hash, software_versions
from scalelab.model.gpt import GPTConfig

ARTIFACT_DIR = "artifact"


class GolfError(ScalelabError):
    """The golf pipeline found an inconsistency (e.g. a round trip that is not exact)."""


def _log(msg: str, progress: bool) -> None:
    if progress:  # stderr: stdout is for results (`--json | jq`)
        print(f"[golf] {msg}", file=sys.stderr, flush=True)


def _load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _vocab_size(run: RunConfig) -> int:
    """The vocabulary: model.vocab_size, else the prepared data's tokenizer (preparing it now)."""
    if run.model.vocab_size:
        return run.model.vocab_size
    from scalelab.data.prepare import load_meta, prepare_data

    d = Path(run.data.dir)
    if not (d.is_dir() and any(d.glob("train_*.bin"))):
        prepare_data(run.data, progress=run.train.progress)
    tok = load_meta(d).get("tokenizer") or {}
    if not tok.get("vocab_size"):
        raise ScalelabError(f"data dir '{d}' has no tokenizer metadata (public shards?): set model.vocab_size "
                            f"(1024 for the sp1024 shards)")
    return int(tok["vocab_size"])


def _final_model(run: RunConfig, golf: GolfConfig, device: torch.device, tokenizer):
    """(which weights, the trained GPT on `device`) from the run's last checkpoint."""
    from scalelab.train.checkpoint import find_checkpoint
    from scalelab.train.load import load_trained

    ckpt = find_checkpoint(run.out_dir, "last")
    if ckpt is None:
        raise GolfError(f"training finished but '{run.out_dir}' holds no checkpoint")
    which = golf.weights if golf.weights != "auto" else ("ema" if run.train.ema_decay else "raw")
    if which == "ema" and not (ckpt / "ema.safetensors").is_file():
        raise GolfError(f"checkpoint '{ckpt}' has no ema.safetensors (golf.weights={golf.weights})")
    trained = load_trained(ckpt, device=device, tokenizer=tokenizer, weights="ema" if which == "ema" else "model")
    return which, trained.model


def _markdown(result: dict) -> str:
    a, e, q = result["artifact"], result["eval"], result["quant"]
    rows = [
        ("val_bpb after round trip (score)", f"{e['post']['val_bpb']:.4f}"),
        ("val_bpb before quantization", f"{e['pre']['val_bpb']:.4f}"),
        ("quantization cost (bpb)", f"{e['quant_gap_bpb']:+.4f}"),
    ]
    if "post_sliding" in e:
        s = e["post_sliding"]
        rows.append((f"val_bpb after round trip, sliding window (stride {s['stride']})",
                     f"{s['val_bpb']:.4f} ({s['seconds']:.1f} s vs {e['post']['seconds']:.1f} s)"))
    if "post_ttt" in e:
        t = e["post_ttt"]
        rows.append((f"val_bpb after round trip, score-first TTT ({t['mode']})", f"{t['val_bpb']:.4f} ({t['seconds']:.1f} s)"))
    sc = e["score"]
    rows.append(("score (the scoring evaluation)", f"{sc['val_bpb']:.4f} by {sc['method']} in {sc['seconds']:.1f} s "
                 f"(eval cap {sc['cap_s']} s{': OVER' if sc['over_cap'] else ''})"))
    rows += [
        ("artifact bytes (code + weights)", f"{a['total_bytes']:,} = {a['code_bytes']:,} + {a['weights_bytes']:,}"),
        ("budget", f"{a['budget_bytes']:,} ({'held' if a['budget_ok'] else 'EXCEEDED'}, "
                   f"headroom {a['budget_bytes'] - a['total_bytes']:,})"),
        ("quantization", f"{q['default']} (clip {q['clip']}; rounding {q.get('method', 'rtn')}; "
                         f"overrides {q['overrides'] or 'none'}), "
                         f"{q['params']:,} params, {result['weights']} weights"),
        ("compressor", f"{result['compression']['chosen']} (" + "; ".join(
            f"{k} {v:,}" if isinstance(v, int) else f"{k}: {v}" for k, v in result['compression']['sizes'].items())
            + ")"),
        ("bits / param: weights file vs order-0 bound", "{bits_per_param} vs {entropy_bits_per_param} (quantized "
         "values at {q_entropy_bits_per_value} bits each, the rest raw)".format(**result["entropy"]["overall"])),
        ("training", f"{result['train']['steps']} steps, {result['train']['tokens']:,} tokens, "
                     f"{result['train']['train_time_s']:.1f} s (cap {result['config']['train']['max_time_s']} s)"),
        ("round trip bit-exact", str(result["roundtrip_bit_exact"])),
    ]
    lines = [f"# Golf run: {result['config']['out_dir']}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", "Counted code files: " + ", ".join(f"`{f['path']}` ({f['bytes']:,})" for f in a["code_files"]), ""]
    return "\n".join(lines)


def run_golf(run: RunConfig, golf: GolfConfig, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The whole golf pipeline (module doc); returns the golf.json dict."""
    from scalelab.eval.train_hooks import training_hooks
    from scalelab.train.trainer import train

    t_start = time.perf_counter()
    load_before = _load1()
    out_dir = Path(run.out_dir)
    if int(os.environ.get("RANK", "0")) == 0:  # (other ranks wait for rank 0's data in the trainer)
        est = precheck(dataclasses.replace(run.model, vocab_size=_vocab_size(run)), golf)
        _log(f"weights at {golf.quant}: ~{est['payload_at_bit_width']:,} bytes before compression + "
             f"{est['code']:,} bytes of code; budget {golf.budget_bytes:,}", progress)

    hooks = training_hooks()
    if golf.qat_frac > 0:  # fake-quantize in the last golf.qat_frac of training (golf/qat.py)
        from scalelab.golf.qat import qat_hook

        hooks = dataclasses.replace(hooks, before_step=qat_hook(golf.quant_spec(), golf.qat_frac))
    summary = train(run, device=device, hooks=hooks)
    if not summary or int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 does the rest
        return {}
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if run.train.threads:
        torch.set_num_threads(run.train.threads)
    model_cfg = GPTConfig(**summary["model_config"])
    tok, tok_file = resolve_tokenizer(run.data.dir, run.data.tokenizer)
    which, model = _final_model(run, golf, dev, tok)
    counter = ByteCounter.for_tokenizer(tok, tok_file if tok.name == "sentencepiece" else None)
    if tok.vocab_size > model_cfg.vocab_size:
        raise GolfError(f"the tokenizer has {tok.vocab_size} tokens but the model only {model_cfg.vocab_size}")
    val = load_split_tokens(run.data.dir, "val")
    autocast = torch.bfloat16 if dev.type == "cuda" else None
    ev = dict(counter=counter, seq_len=model_cfg.seq_len, batch_size=golf.eval_batch, device=dev,
              autocast_dtype=autocast)

    pre = evaluate_bpb(model, val, **ev)
    _log(f"before quantization: val_bpb {pre['val_bpb']:.4f} ({pre['tokens']:,} tokens, {pre['bytes']:,} bytes, "
         f"{pre['seconds']:.1f} s)", progress)

    t_q = time.perf_counter()
    hessians = None
    if golf.quant_method == "gptq":
        from scalelab.golf.gptq import calibration_windows, collect_hessians

        calib = calibration_windows(run.data.dir, model_cfg.seq_len, golf.gptq_calib_tokens)
        hessians = collect_hessians(model, calib, batch_size=golf.eval_batch)
        _log(f"gptq: Hessians of {len(hessians)} linear layers from {calib.numel():,} training tokens", progress)
    qs, blob, enc = build_weights(dataclasses.asdict(model_cfg), {k: v.cpu() for k, v in model.state_dict().items()},
                                  golf, hessians)  # quantize, low-rank corrections, compress (golf/layout.py)
    chosen = enc["compression"]["chosen"]
    quant_s = time.perf_counter() - t_q
    tokenizer_bytes = tok_file.stat().st_size if tok_file is not None else None
    art = write_artifact(out_dir / ARTIFACT_DIR, blob, tokenizer=tok_file if golf.count_tokenizer else None)
    total = art["total_bytes"]
    _log(f"artifact: {total:,} bytes = code {art['code_bytes']:,} + weights {art['weights_bytes']:,} "
         f"({chosen}; {quant_s:.1f} s to quantize and compress)", progress)

    # Round trip: the model from the file on disk alone.
    disk = (out_dir / ARTIFACT_DIR / "model.slgf").read_bytes()
    _, decoded = codec.load_state_dict(disk)
    expected = qs.dequantized()
    exact = set(decoded) == set(expected) and all(torch.equal(decoded[k], expected[k]) for k in expected)
    if not exact:
        raise GolfError("the weights decoded from the artifact differ from the in-memory quantized weights; "
                        "this is a bug in scalelab.golf")
    reloaded = codec.load_model(disk, device=dev)
    post = evaluate_bpb(reloaded, val, **ev)
    _log(f"after round trip: val_bpb {post['val_bpb']:.4f} ({post['seconds']:.1f} s)", progress)
    evals: dict[str, Any] = {"pre": pre, "post": post, "quant_gap_bpb": post["val_bpb"] - pre["val_bpb"]}
    stride = min(golf.sliding_stride or model_cfg.seq_len, model_cfg.seq_len)  # the default 64 capped at seq_len
    if stride < model_cfg.seq_len:
        sliding = evaluate_bpb(reloaded, val, stride=stride, **ev)
        sliding["cost_vs_windows"] = round(sliding["seconds"] / max(post["seconds"], 1e-9), 2)
        evals["post_sliding"] = sliding
        _log(f"after round trip, sliding window stride {stride}: val_bpb {sliding['val_bpb']:.4f} "
             f"({sliding['seconds']:.1f} s, {sliding['cost_vs_windows']}x the plain evaluation)", progress)
    if golf.ttt:
        from scalelab.golf.ttt import score_first_ttt

        ttt = score_first_ttt(reloaded, val, counter, model_cfg.seq_len, stride if stride < model_cfg.seq_len else None,
                              mode=golf.ttt, lr=golf.ttt_lr, steps=golf.ttt_steps, chunk_tokens=golf.ttt_chunk_tokens,
                              rank=golf.ttt_rank, batch_size=golf.eval_batch, seed=run.seed, device=dev)
        evals["post_ttt"] = {k: v for k, v in ttt.items() if k != "chunks"}
        _log(f"after round trip, score-first TTT ({golf.ttt}, lr {golf.ttt_lr}): val_bpb {ttt['val_bpb']:.4f} "
             f"({ttt['seconds']:.1f} s)", progress)
    # The score: the last evaluation that ran (TTT > sliding > plain windows), timed against the eval cap.
    method = "ttt" if golf.ttt else ("sliding" if "post_sliding" in evals else "windows")
    final = evals[{"ttt": "post_ttt", "sliding": "post_sliding", "windows": "post"}[method]]
    over = golf.eval_cap_s is not None and final["seconds"] > golf.eval_cap_s
    evals["score"] = {"method": method, "val_bpb": final["val_bpb"], "seconds": final["seconds"],
                      "cap_s": golf.eval_cap_s, "over_cap": over}
    if over:
        _log(f"WARNING: the scoring evaluation ({method}) took {final['seconds']:.1f} s, over golf.eval_cap_s="
             f"{golf.eval_cap_s} s (the challenge's evaluation cap); the score would not count", True)

    stats = qs.stats()
    result = {
        "format_version": 1,
        "config": to_dict(run, golf),
        "val_bpb": post["val_bpb"],
        "val_bpb_sliding": evals.get("post_sliding", {}).get("val_bpb"),
        "val_bpb_ttt": evals.get("post_ttt", {}).get("val_bpb"),
        "score_bpb": evals["score"]["val_bpb"],  # the scoring evaluation's (method in eval.score)
        "eval_over_cap": evals["score"]["over_cap"],
        "weights": which,
        "train": {k: summary.get(k) for k in ("steps", "tokens", "train_time_s", "params", "non_embedding_params",
                                              "epochs", "val_loss", "val_bpb", "world_size")},
        "eval": evals,
        "quant": {"default": golf.quant, "clip": golf.clip, "overrides": dict(golf.quant_overrides),
                  "method": golf.quant_method, "methods": qs.methods,
                  "params": stats["params"], "by_scheme": stats["by_scheme"], "aliases": stats["aliases"],
                  "schemes": qs.schemes, "payload_bytes": enc["compression"]["payload_bytes"],
                  "seconds": round(quant_s, 3), "lowrank": enc["lowrank"]},
        "compression": enc["compression"],
        "entropy": enc["entropy"],
        "artifact": {**art, "budget_bytes": golf.budget_bytes,
                     "budget_ok": total <= golf.budget_bytes, "tokenizer_bytes": tokenizer_bytes,
                     "tokenizer_counted": golf.count_tokenizer,
                     "bits_per_param": round(8 * art["weights_bytes"] / max(stats["params"], 1), 3)},
        "roundtrip_bit_exact": exact,
        "model_config": dataclasses.asdict(model_cfg),
        "machine": {"device": str(dev), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "load_1m_before": load_before, "load_1m_after": _load1()},
        "wall_s": round(time.perf_counter() - t_start, 2),
        "git": git_hash(),
        "versions": software_versions(),
    }
    atomic_write_json(out_dir / "golf.json", result)
    atomic_write_text(out_dir / "GOLF.md", _markdown(result))
    check_budget(total, golf.budget_bytes, art["code_bytes"], art["weights_bytes"])
    return result
