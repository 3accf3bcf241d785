"""GPTQ-style Hessian-aware rounding (Frantar et al. 2022), for `golf.quant_method=gptq`.

Round-to-nearest minimizes the error of each weight; what matters is the error of each
layer's *output* on real inputs, ||X W^T - X Q^T||. For a Linear with inputs X (rows of
the calibration batch), that error for one output row is (w - q) H (w - q)^T with
H = X^T X, so an error made on one input column can be compensated by the columns not
yet quantized. GPTQ quantizes the columns one at a time and spreads each column's
rounding error over the remaining columns through the Cholesky factor of H^-1 (the
closed-form optimal update of the Optimal Brain Surgeon), block by block so that most of
the work is one matrix product per block.

Here:
- H is accumulated from the trained model's own forward passes on training tokens
  (`collect_hessians`: a hook on every nn.Linear records its inputs), all layers from the
  full-precision model in one pass (not layer by layer on already quantized inputs);
- the per-row scales are the ones round-to-nearest uses (golf.clip on the original
  weights), so the file format, the dequantizer and the byte accounting do not change;
- columns go in order of decreasing H diagonal ("act order": the most used inputs are
  quantized first, while there are many columns left to absorb their error);
- H gets damp * mean(diag H) on its diagonal (numerical stability, as in the paper),
  and input columns that never fired (diag 0) are quantized to 0.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from scalelab.data.shards import list_shards, open_shard
from scalelab.errors import DataError

from scalelab.golf.rounding import _scale_for, row_clip


def calibration_windows(data_dir, seq_len: int, n_tokens: int) -> torch.Tensor:
    """[n, seq_len] token windows from the start of the training split (n = n_tokens // seq_len)."""
    need = max(1, n_tokens // seq_len) * seq_len
    parts, have = [], 0
    for path in list_shards(data_dir, "train"):
        arr = np.asarray(open_shard(path)[: need - have], dtype=np.int64)
        parts.append(arr)
        have += arr.size
        if have >= need:
            break
    if have < seq_len:
        raise DataError(f"golf.quant_method=gptq needs training tokens for calibration; '{data_dir}' has {have} "
                        f"(fewer than model.seq_len={seq_len}). Use golf.quant_method=rtn or prepare the data")
    tokens = torch.from_numpy(np.concatenate(parts))
    n = tokens.numel() // seq_len
    return tokens[: n * seq_len].reshape(n, seq_len)


@torch.no_grad()
def collect_hessians(model: nn.Module, windows: torch.Tensor, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """{state-dict name of each nn.Linear weight: H = X^T X / n (fp64, on the CPU)} from
    forward passes over `windows` [n, seq_len] (token ids)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook_for(name: str):
        def hook(_module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            h = (x.T @ x).cpu()
            sums[name] = sums[name] + h if name in sums else h
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    for mod_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            hooks.append(module.register_forward_pre_hook(hook_for(f"{mod_name}.weight" if mod_name else "weight")))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for i in range(0, windows.shape[0], batch_size):
            model(windows[i:i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {k: sums[k] / counts[k] for k in sums}


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, bits: int, clip: str = "mse",
                  clip_quantile: float = 0.9999984, damp: float = 0.01, block: int = 128
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored uint8 [rows, cols] = q + 2^(bits-1), fp16 scale [rows]) for w [rows, cols],
    the same layout as `quantize.quantize_rows`, with the rounding chosen by GPTQ."""
    w = w.detach().to(torch.float32)
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian of shape {tuple(hessian.shape)} for a weight with {cols} input columns")
    qmax = (1 << (bits - 1)) - 1
    scale = _scale_for(row_clip(w, bits, clip, clip_quantile), qmax)
    s = scale.to(torch.float64)[:, None]

    H = hessian.to(torch.float64).clone()
    W = w.to(torch.float64).clone()
    dead = torch.diagonal(H) <= 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diagonal(H), descending=True)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.diagonal(H).mean() * torch.eye(cols, dtype=torch.float64)
    # U: upper Cholesky factor of H^-1; row j holds the update that column j's error implies.
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros(rows, cols, dtype=torch.int16)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        E1 = torch.zeros_like(W1)
        for j in range(i2 - i1):
            col = W1[:, j]
            q = torch.clamp(torch.round(col / s[:, 0]), -qmax, qmax)
            Q[:, i1 + j] = q.to(torch.int16)
            err = (col - q * s[:, 0]) / U1[j, j]
            W1[:, j:] -= err[:, None] * U1[j, j:][None, :]
            E1[:, j] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]
    Q = Q[:, torch.argsort(perm)]
    return (Q + (1 << (bits - 1))).to(torch.uint8), scale

