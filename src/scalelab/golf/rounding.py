"""Per-row rounding for golf's quantizers: fp16 row scales and the row clip value (max, a
quantile, or the MSE-best ratio of the max). Shared by round-to-nearest (quantize.py) and
GPTQ (gptq.py), so neither imports the other."""
from __future__ import annotations

import torch

MSE_RATIOS = (1.0, 0.98, 0.96, 0.94, 0.92, 0.9, 0.88, 0.86, 0.84, 0.82, 0.8, 0.77, 0.74, 0.7, 0.66, 0.62,
              0.58, 0.54, 0.5)
_FP16_MIN_SCALE = 2.0**-24  # smallest positive fp16 (subnormal)


def _scale_for(clip: torch.Tensor, qmax: int) -> torch.Tensor:
    """fp16 scale per row from the clip value, rounded up so that qmax * scale >= clip
    (zero rows get scale 1)."""
    s = torch.where(clip > 0, clip / qmax, torch.ones_like(clip)).to(torch.float16).clamp_min(_FP16_MIN_SCALE)
    low = s.to(torch.float32) * qmax < clip
    return torch.where(low, torch.nextafter(s, torch.full_like(s, float("inf"))), s)


def _quantize_with(w: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    """Integer levels in [-qmax, qmax] (int16) for w [rows, cols] with fp16 scale [rows]."""
    return torch.clamp(torch.round(w / scale.to(torch.float32)[:, None]), -qmax, qmax).to(torch.int16)


def _row_quantile(a: torch.Tensor, q: float) -> torch.Tensor:
    # torch.quantile refuses inputs over 2^24 values: go in chunks of rows.
    rows_per_chunk = max(1, (1 << 22) // max(1, a.shape[1]))
    return torch.cat([torch.quantile(a[i:i + rows_per_chunk], q, dim=1) for i in range(0, a.shape[0], rows_per_chunk)])


def row_clip(w: torch.Tensor, bits: int, clip: str, clip_quantile: float) -> torch.Tensor:
    """Clip value per row of w [rows, cols] (fp32)."""
    amax = w.abs().amax(dim=1)
    if clip == "max":
        return amax
    if clip == "quantile":
        return _row_quantile(w.abs(), clip_quantile)
    qmax = (1 << (bits - 1)) - 1
    # All ratios at once ([ratios, rows, cols]; chunks of rows bound the memory): the first
    # ratio with the least error wins, as a loop over MSE_RATIOS with a strict "<" would pick.
    ratios = torch.tensor(MSE_RATIOS, dtype=torch.float32)
    rows_per_chunk = max(1, (1 << 22) // max(1, len(MSE_RATIOS) * w.shape[1]))
    out = []
    for i in range(0, w.shape[0], rows_per_chunk):
        wc, ac = w[i:i + rows_per_chunk], amax[i:i + rows_per_chunk]
        c = ratios[:, None] * ac[None, :]  # [ratios, rows]
        s = _scale_for(c, qmax).to(torch.float32)[:, :, None]
        q = torch.clamp(torch.round(wc[None] / s), -qmax, qmax)
        err = (wc[None] - q * s).square().sum(dim=2)
        out.append(c.gather(0, err.argmin(dim=0, keepdim=True))[0])
    return torch.cat(out) if out else amax
