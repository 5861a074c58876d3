"""Pure tensor functions on factored deltas: ΔW = Σ coef_k · up_k @ down_k (2-D factors).

A "part" is (up (out, r), down (r, k), coef), factors in any of fp32/fp16/bf16; every computation is
float32 (float64 for the error).  Nothing here builds a dense out×k matrix.
"""
from __future__ import annotations

import math

import torch

Part = tuple[torch.Tensor, torch.Tensor, float]
# float32 round-off of an SVD from stacked factors, per stacked rank (at least 16); the noise measured
# when inputs cancel is about 4·eps·‖a‖₂·‖b‖₂
ROUND_OFF = torch.finfo(torch.float32).eps


def concat_parts(parts: list[Part], dtype: torch.dtype = torch.float32,
                 out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Join parts rank-wise so that up @ down equals Σ coef·up_k·down_k exactly (scale 1):
    √|coef| on each side, the sign on up, written straight into joined factors of dtype (or into
    out, (up, down) of the joined shapes).  Each value is computed in float32 and rounded once to
    the output dtype, whatever dtype the parts are stored in."""
    first_up, first_down = parts[0][0], parts[0][1]
    total = sum(u.shape[1] for u, _, _ in parts)
    if out is None:
        up = torch.empty(first_up.shape[0], total, dtype=dtype, device=first_up.device)
        down = torch.empty(total, first_down.shape[1], dtype=dtype, device=first_down.device)
    else:
        up, down = out
    at = 0
    for u, d, c in parts:
        r, root = u.shape[1], math.sqrt(abs(c))
        _scaled_into(up[:, at:at + r], u, math.copysign(root, c) if c else 0.0)
        _scaled_into(down[at:at + r], d, root)
        at += r
    return up, down


def _scaled_into(out: torch.Tensor, x: torch.Tensor, c: float) -> None:
    """out = c·x computed in float32 and rounded once to out's dtype.  torch computes a product whose
    inputs share out's dtype (or are float32) in float32; any other mix is widened to float32 first."""
    if x.dtype == out.dtype or x.dtype == torch.float32:
        torch.mul(x, c, out=out)
    elif out.dtype == torch.float32:
        out.copy_(x)
        out.mul_(c)
    else:
        torch.mul(x.float(), c, out=out)


def stacked(parts: list[Part]) -> tuple[torch.Tensor, torch.Tensor]:
    """A = [coef_1·up_1 | …], B = [down_1; …] in float32, with A @ B = Σ coef_k·up_k·down_k."""
    return (torch.cat([u.float() * c for u, _, c in parts], dim=1),
            torch.cat([d.float() for _, d, _ in parts], dim=0))


def singular_factors(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(Qa, U, S, Vh, Qb) with a @ b = (Qa·U)·diag(S)·(Vh·Qbᵀ): QR of both stacked factors and an SVD of
    the small core, so no out×in matrix is ever built.  Singular values at the level of float32
    round-off (below ROUND_OFF·‖a‖₂·‖b‖₂) are set to 0: inputs that cancel (P merged with −P) give
    zeros, not noise."""
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b.T)
    u, s, vh = torch.linalg.svd(ra @ rb.T, full_matrices=False)
    # ‖·‖_F ≥ ‖·‖₂: no value below the Frobenius bound, none below the spectral one (most calls)
    if s.numel() and float(s[-1]) <= _round_off(a.shape[1], ra.norm() * rb.norm()):
        floor = _round_off(a.shape[1], torch.linalg.matrix_norm(ra, 2) * torch.linalg.matrix_norm(rb, 2))
        s = torch.where(s > floor, s, torch.zeros_like(s))
    return qa, u, s, vh, qb


def _round_off(stacked_rank: int, norms: torch.Tensor) -> float:
    """ROUND_OFF per stacked rank (at least 16) times the product of the factors' norms."""
    return ROUND_OFF * max(16, stacked_rank) * float(norms)


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """Smallest n whose leading singular values keep at least `energy` of Σ s² (at least 1)."""
    power = s.double() ** 2
    total = float(power.sum())
    if total == 0.0:
        return 1
    kept = torch.cumsum(power, 0) / total
    return int(min(len(s), int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12)) + 1))


def svd_parts(parts: list[Part], rank: int | None, energy: float | None = None,
              stack: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best approximation of Σ coef·up·down at `rank` (or the energy rank, capped by `rank`); scale 1.
    stack: stacked(parts), when the caller has it already."""
    qa, u, s, vh, qb = singular_factors(*(stack if stack is not None else stacked(parts)))
    n = len(s)
    if energy is not None:
        n = min(n, rank_for_energy(s, energy))
    if rank is not None:
        n = min(n, rank)
    root = s[:n].sqrt()
    return qa @ (u[:, :n] * root), (root[:, None] * vh[:n]) @ qb.T


def add_parts(parts: list[tuple[torch.Tensor, torch.Tensor, float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The classic factor-wise sum: up = Σ w_k·c_k·up_k, down = Σ w_k·c_k·down_k, c_k = √(α_k/α_1).

    parts are (up, down, weight, alpha); the output's alpha is the first part's alpha.
    """
    base = parts[0][3]
    up = sum(u.float() * (w * math.sqrt(a / base)) for u, _, w, a in parts)
    down = sum(d.float() * (w * math.sqrt(a / base)) for _, d, w, a in parts)
    return up, down


def concat_round_off(parts: list[Part], up: torch.Tensor, down: torch.Tensor) -> float:
    """relative_error of a concat, about twice as fast: ‖up·down − Σ coef·up_k·down_k‖_F / ‖Σ …‖_F
    for the joined factors concat_parts wrote (rounded to their dtype).  The error is formed from
    each factor's rounding, e = rounded − ideal (ideal: √|coef|·factor, in float64), before any
    product: up·down − T = e_up·down + ideal_up·e_down.  Nothing cancels, so its Gram matrices can
    be float32."""
    ideal_up = torch.cat([u.double() * math.copysign(math.sqrt(abs(c)), c) for u, _, c in parts], dim=1)
    ideal_down = torch.cat([d.double() * math.sqrt(abs(c)) for _, d, c in parts], dim=0)
    e_up, e_down = (up.double() - ideal_up).float(), (down.double() - ideal_down).float()
    u, d = ideal_up.float(), down.float()
    ee_up, uu, ue = (x.double() for x in (e_up.T @ e_up, u.T @ u, u.T @ e_up))
    dd, ee_down, de = (x.double() for x in (d @ d.T, e_down @ e_down.T, d @ e_down.T))
    # ‖e_up·down‖² + ‖ideal_up·e_down‖² + 2⟨e_up·down, ideal_up·e_down⟩, each a trace of Gram products
    diff_sq = float((ee_up * dd).sum() + (uu * ee_down).sum() + 2.0 * (ue.T * de).sum())
    target_sq = float((uu * (dd - de - de.T + ee_down)).sum())  # ideal_down = down − e_down
    if target_sq <= 0.0:
        return 0.0 if diff_sq <= 1e-30 else math.inf
    return math.sqrt(max(diff_sq, 0.0) / target_sq)


def relative_error(target: list[Part], result: list[Part],
                   stack: tuple[torch.Tensor, torch.Tensor] | None = None) -> float:
    """‖Σ result − Σ target‖_F / ‖Σ target‖_F from Gram matrices (float64, no dense ΔW).
    stack: stacked(target), when the caller has it already."""
    a, b = (x.double() for x in (stack if stack is not None else stacked(target)))
    u, d = (x.double() for x in stacked(result))
    ga, gb = a.T @ a, b @ b.T
    target_sq = float((ga * gb).sum())
    gu, gd = u.T @ u, d @ d.T
    result_sq = float((gu * gd).sum())
    cross = float(((a.T @ u) * (b @ d.T)).sum())
    diff_sq = max(target_sq + result_sq - 2.0 * cross, 0.0)
    # float64 round-off of the sums above: a target below it is zero (inputs that cancel), as is a
    # difference below it
    noise = 1e-14 * float((ga.abs() * gb.abs()).sum() + (gu.abs() * gd.abs()).sum())
    if target_sq <= noise:
        return 0.0 if diff_sq <= noise else math.inf
    return math.sqrt(diff_sq / target_sq)
