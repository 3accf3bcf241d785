"""Low-rank error correction of the worst quantized tensors (`golf.lowrank_rank`, `golf.lowrank_tensors`).

After quantization the residual R = W - dequant(Q) of a tensor is noise plus whatever
structure the per-row grid cannot represent; its best rank-r approximation (truncated
SVD: R ~ U_r S_r V_r^T, stored as A = U_r sqrt(S_r) [rows, r] and B = sqrt(S_r) V_r^T
[r, cols]) is stored in low precision (`golf.lowrank_quant`, per-row int8 by default)
and added back by the decoder (codec_ext.add_lowrank). Which tensors: the
`lowrank_tensors` whose correction removes the most squared error, ||R||^2 -
||R - A B||^2 with the factors as stored (a tensor whose correction removes nothing, or
whose factors would hold as many values as the tensor, gets none). The factors are
ordinary stored tensors (name.lr_a, name.lr_b), so they are counted in the artifact, and
the round trip check covers them.
"""
from __future__ import annotations

import torch

from scalelab.golf.codec_ext import add_lowrank
from scalelab.golf.quantize import INT_SCHEMES, QuantizedState, quantize_rows
from scalelab.golf.codec import dequantize


def _stored(m: torch.Tensor, scheme: str) -> tuple[dict, torch.Tensor]:
    """(tensor dict for codec.pack, the value a reader gets) of a factor in `scheme`."""
    if scheme in INT_SCHEMES:
        bits = INT_SCHEMES[scheme]
        q, scale = quantize_rows(m, bits, "mse")
        return {"kind": "q", "shape": list(m.shape), "bits": bits, "q": q, "scale": scale}, \
            dequantize(q, scale, bits, list(m.shape))
    v = m.to(torch.float16)
    return {"kind": "f16", "shape": list(m.shape), "values": v}, v.to(torch.float32)


def correction(w: torch.Tensor, deq: torch.Tensor, rank: int, scheme: str):
    """(factor dicts a, b; squared error removed) of the rank-`rank` correction of w - deq."""
    w2 = w.detach().to(torch.float32).reshape(w.shape[0], -1)
    resid = w2 - deq.reshape(w2.shape)
    U, S, Vh = torch.linalg.svd(resid.to(torch.float64), full_matrices=False)
    r = min(rank, S.numel())
    root = S[:r].sqrt()
    a, a_val = _stored((U[:, :r] * root).to(torch.float32), scheme)
    b, b_val = _stored((root[:, None] * Vh[:r]).to(torch.float32), scheme)
    after = resid - (add_lowrank(deq.reshape(w2.shape), a_val, b_val) - deq.reshape(w2.shape))
    return a, b, float(resid.square().sum() - after.square().sum())


def add_corrections(qs: QuantizedState, state_dict: dict[str, torch.Tensor], rank: int, n_tensors: int,
                    scheme: str = "int8") -> dict:
    """Give the `n_tensors` quantized tensors that gain most a rank-`rank` correction (in
    place: factor tensors appended to qs.tensors, qs.lowrank filled); returns the report
    {name: {rank, error_removed, error_before}} of every candidate."""
    if rank <= 0 or n_tensors <= 0:
        return {}
    deq = qs.dequantized()
    cands = []
    for t in qs.tensors:
        rows = t["shape"][0] if t["shape"] else 1
        cols = (t["q"].numel() // rows) if t["kind"] == "q" else 0
        if t["kind"] != "q" or rank * (rows + cols) >= rows * cols:
            continue
        w = state_dict[t["name"]]
        a, b, gain = correction(w, deq[t["name"]], rank, scheme)
        before = float((w.detach().float() - deq[t["name"]]).square().sum())
        cands.append((gain, t["name"], a, b, before))
    cands.sort(key=lambda c: -c[0])
    report = {}
    for i, (gain, name, a, b, before) in enumerate(cands):
        chosen = i < n_tensors and gain > 0
        report[name] = {"error_before": before, "error_removed": gain, "chosen": chosen}
        if chosen:
            for part, d in (("lr_a", a), ("lr_b", b)):
                qs.tensors.append({"name": f"{name}.{part}", **d})
                qs.schemes[f"{name}.{part}"] = f"lowrank {scheme}"
            qs.lowrank[name] = int(a["shape"][1])
    return report
