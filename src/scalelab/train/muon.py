"""Muon (Jordan et al. 2024): SGD-momentum whose update for each hidden matrix is
orthogonalized by a quintic Newton-Schulz iteration.

Same update as `torch.optim.Muon` (Nesterov momentum by lerp, the (3.4445, -4.7750, 2.0315)
quintic, 5 steps, lr scaled by sqrt(max(1, rows/cols)), decoupled weight decay lr*wd), with
one difference that is the reason this file exists: the iteration's dtype is a parameter.
torch's runs in bf16, which is right on GPUs and slow on CPUs without native bf16 matmuls
(measured on the dev box: 0.9 s vs 30 ms per step on the golf CPU shapes,
`bench/bench_optim_step.py --torch-muon`). Same-shaped matrices are orthogonalized together.
`build_optimizer` picks bf16 on CUDA and fp32 elsewhere.

A param group may carry `row_split` (row counts): each block of rows is then its own
matrix, so a fused projection (gpt.py's wqkv, w13) gets exactly the update its separate
parts would (orthogonalizing [q; k; v] as one matrix is a different optimizer).

`ns="polar_express"` swaps the fixed quintic for the Polar Express schedule (one
minimax-optimal quintic per iteration, below): same matmuls per step, singular values
closer to 1 (tests/test_muon_polar.py).
"""
from __future__ import annotations

import math

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)

# Polar Express: Amsel, Persson, Musco & Gower 2025, "The Polar Express: Optimal Matrix Sign
# Methods and Their Application to the Muon Algorithm" (arXiv:2505.16932), Algorithm 1:
# iteration k applies p_k(x) = a x + b x^3 + c x^5, p_k the minimax-optimal odd quintic for
# the interval the singular values are known to lie in after k - 1 steps (from [1e-3, 1]).
# Every polynomial but the last is divided by (1.01, 1.01^3, 1.01^5) (the paper's safety
# margin for rounding errors), the input by 1.01 ||X||_F; past the list the last repeats.
_PE_RAW = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]
POLAR_EXPRESS = [(a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _PE_RAW[:-1]] + [_PE_RAW[-1]]
NS_SCHEMES = ("quintic", "polar_express")


def _coefficients(ns: str, steps: int) -> tuple[list[tuple[float, float, float]], float]:
    """(a, b, c) per iteration and the factor on the Frobenius norm of the input."""
    if ns == "quintic":
        return [NS_COEFFICIENTS] * steps, 1.0
    if ns == "polar_express":
        return [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)], 1.01
    raise ValueError(f"Muon: ns must be one of {', '.join(NS_SCHEMES)}, got '{ns}'")


def orthogonalize(update: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16,
                  eps: float = 1e-7, ns: str = "quintic") -> torch.Tensor:
    """Approximately U V^T of update = U S V^T (singular values land in ~[0.5, 1.5]).

    `update` is one matrix [rows, cols] or a stack of same-shaped ones [n, rows, cols]
    (one batched matmul per iteration instead of n small ones: what makes Muon cheap on
    CPUs, where small matmuls are dominated by call overhead)."""
    coeffs, margin = _coefficients(ns, steps)
    x = update.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: the Gram matrix is the smaller one
        x = x.mT
    # Frobenius norm >= spectral norm, so each matrix starts with ||x||_2 <= 1
    x = x / (x.norm(dim=(-2, -1), keepdim=True) * margin).clamp(min=eps)
    fma = torch.addmm if x.dim() == 2 else torch.baddbmm  # fused, as torch.optim.Muon rounds
    for a, b, c in coeffs:
        gram = x @ x.mT
        poly = fma(gram, gram, gram, beta=b, alpha=c)  # b*G + c*G^2
        x = fma(x, poly, x, beta=a)                     # a*x + (bG + cG^2) x
    return x.mT if tall else x


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters only; give embeddings, heads and vectors to AdamW."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 nesterov: bool = True, ns_steps: int = 5, ns_dtype: torch.dtype | str = torch.bfloat16,
                 ns: str = "quintic"):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Muon: lr, momentum and weight_decay must be >= 0 (got {lr}, {momentum}, {weight_decay})")
        # Kept as a name ("float32"): optimizer state dicts must hold plain values to checkpoint.
        ns_dtype = str(ns_dtype).removeprefix("torch.")
        if ns_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"Muon: ns_dtype must be float32, bfloat16 or float16, got {ns_dtype}")
        _coefficients(ns, 1)  # fails early on an unknown scheme
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                        ns_steps=ns_steps, ns_dtype=ns_dtype, row_split=None, ns=ns)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes 2-D parameters only; got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mom)
                update = p.grad.lerp(buf, mom) if group["nesterov"] else buf
                split = group.get("row_split")  # absent in state dicts saved before it existed
                # row blocks are views: updating a block updates p in place
                for block, u in (zip(p.split(split), update.split(split), strict=True) if split else [(p, update)]):
                    by_shape.setdefault((tuple(block.shape), p.device), []).append((block, u))
            for (shape, _), items in by_shape.items():
                ortho = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"],
                                      getattr(torch, group["ns_dtype"]), ns=group.get("ns", "quintic"))
                scale = math.sqrt(max(1.0, shape[0] / shape[1]))
                for (p, _), o in zip(items, ortho):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(o.to(p.dtype), alpha=-lr * scale)
        return loss
