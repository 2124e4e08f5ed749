"""Tikhonov solutions for every weight from one Krylov basis, for the discrepancy principle.

With x = x0 + V c, argmin_x ||y - A x||^2 + lam ||x - x0||^2 over a Krylov subspace is a
small problem. Golub-Kahan bidiagonalisation from r0 = y - A x0 builds orthonormal U
(measurement side, u_1 = r0 / beta_1) and V (image side) with A V_k = U_{k+1} B_k, B_k
lower bidiagonal, (k + 1) x k. Then y - A x = U_{k+1} (beta_1 e1 - B_k c), and with the
SVD B_k = P diag(s) Q^T and g = beta_1 P^T e1, for every lam at once:
c = Q diag(s / (s^2 + lam)) g[:k] and
||y - A x||^2 = sum_i (lam g_i / (s_i^2 + lam))^2 + g_{k+1}^2,
a sum of squares (no cancellation against ||r0||, which a Lanczos expansion of the
residual suffers when the target is far below it). Searching lam by bisection thus costs
no operator calls and no image-sized arithmetic: one basis replaces a conjugate-gradient
solve per bisection step. The small problem runs on the CPU in float64: on a GPU a small
SVD and a few scalars per image are pure launch latency.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..operators.base import LinearOperator


def _norm(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).norm(dim=1)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.ndim - 1))


@dataclass
class TikhonovFit:
    x: torch.Tensor  # the solutions
    rms: torch.Tensor  # (N,) their residual RMS
    lam: torch.Tensor  # (N,) the weight picked per image


class _Basis:
    """Orthonormal vectors per image, flattened into one growing (N, k, D) buffer so that
    projecting onto all of them is one batched product, not k."""

    def __init__(self, first: torch.Tensor) -> None:
        self.shape = first.shape
        self.k = 0
        self.vectors = first.new_empty(first.shape[0], 8, first[0].numel())
        self.append(first)

    def append(self, v: torch.Tensor) -> None:
        if self.k == self.vectors.shape[1]:
            self.vectors = torch.cat([self.vectors, torch.empty_like(self.vectors)], 1)
        self.vectors[:, self.k] = v.flatten(1)
        self.k += 1

    def last(self) -> torch.Tensor:
        return self.vectors[:, self.k - 1].view(self.shape)

    def orthogonalise(self, w: torch.Tensor) -> torch.Tensor:
        """w minus its projection on the basis, by classical Gram-Schmidt done twice (as
        stable as the modified one, in two batched products a pass)."""
        v, flat = self.vectors[:, : self.k], w.flatten(1)
        for _ in range(2):
            flat = flat - torch.einsum("nk,nkd->nd", torch.einsum("nkd,nd->nk", v, flat), v)
        return flat.view(self.shape)

    def combine(self, coeffs: torch.Tensor) -> torch.Tensor:
        """sum_j coeffs[:, j] v_j over the first coeffs.shape[1] vectors."""
        v = self.vectors[:, : coeffs.shape[1]]
        return torch.einsum("nk,nkd->nd", coeffs.to(v), v).view(self.shape)


def discrepancy_tikhonov(
    operator: LinearOperator, y: torch.Tensor, x0: torch.Tensor, target_rms: float, **options
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, rms) of ``tikhonov_by_discrepancy``."""
    fit = tikhonov_by_discrepancy(operator, y, x0, target_rms, **options)
    return fit.x, fit.rms


def tikhonov_by_discrepancy(
    operator: LinearOperator,
    y: torch.Tensor,
    x0: torch.Tensor,
    target_rms: float | torch.Tensor,
    *,
    lam_range: tuple[float, float] = (1e-4, 1e4),
    bisections: int = 30,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> TikhonovFit:
    """Per image, the Tikhonov solution around ``x0`` with the largest lam in
    ``lam_range`` whose residual RMS ||y - A x|| / sqrt(numel of y) is at most
    ``target_rms`` (the smallest lam if none is), that residual RMS and that lam.

    The bidiagonalisation (with full reorthogonalisation of both bases) runs until the
    normal-equation residual of the chosen lam is below ``tol`` relative to ||A^T r0||,
    as conjugate gradients would be stopped, or for ``max_iter`` operator round trips.
    """
    n, m = y.shape[0], y[0].numel()
    r0 = y - operator(x0)
    beta = _norm(r0)
    left = _Basis(r0 * _per_image(_safe_inverse(beta), r0))
    w = operator.adjoint(left.last())
    alpha = _norm(w)
    right = _Basis(w * _per_image(_safe_inverse(alpha), w))
    # The small problem, on the CPU in float64: beta_1, then (alpha_j, beta_{j+1}) per step.
    beta1, alpha1 = torch.stack([beta, alpha]).double().cpu()
    target_sq = torch.as_tensor(target_rms, dtype=torch.float64).cpu().expand(n) ** 2 * m
    log_lam_range = torch.tensor(lam_range, dtype=torch.float64).log()
    alphas, betas = [alpha1], []
    while True:
        p = left.orthogonalise(operator(right.last()))
        beta = _norm(p)
        left.append(p * _per_image(_safe_inverse(beta), p))
        q = right.orthogonalise(operator.adjoint(left.last()))
        alpha = _norm(q)
        beta_next, alpha_next = torch.stack([beta, alpha]).double().cpu()  # the one sync a step
        betas.append(beta_next)
        coeffs, log_lam, residual_sq = _bisect(alphas, betas, beta1, target_sq, log_lam_range, bisections)
        # ||A^T (y - A x) - lam (x - x0)|| = alpha_{k+1} beta_{k+1} |c_k| (zero on an invariant subspace).
        converged = alpha_next * beta_next * coeffs[:, -1].abs() <= tol * alpha1 * beta1
        if bool(converged.all()) or right.k >= max_iter:
            break
        right.append(q * _per_image(_safe_inverse(alpha), q))
        alphas.append(alpha_next)
    x = x0 + right.combine(coeffs.to(x0.device))
    rms = (residual_sq / m).sqrt()
    return TikhonovFit(x, rms.to(y.device, y.dtype), log_lam.exp().to(y.device, y.dtype))


def _safe_inverse(norms: torch.Tensor) -> torch.Tensor:
    """1 / norm, or 0 for a vector that vanished (an image whose subspace is exhausted
    continues with zero vectors, which leave its small problem unchanged)."""
    tiny = torch.finfo(norms.dtype).tiny ** 0.5
    return torch.where(norms > tiny, 1 / norms.clamp_min(tiny), torch.zeros_like(norms))


def _bisect(alphas, betas, beta1, target_sq, log_lam_range, bisections):
    """Coefficients for the lam picked per image by bisection on log lam (the largest whose
    squared residual is at most ``target_sq``), that log lam and that squared residual."""
    k = len(alphas)
    b = torch.zeros(beta1.shape[0], k + 1, k, dtype=torch.float64)
    idx = torch.arange(k)
    b[:, idx, idx] = torch.stack(alphas, 1)
    b[:, idx + 1, idx] = torch.stack(betas, 1)
    p, s, qh = torch.linalg.svd(b)
    g = beta1[:, None] * p[:, 0, :]  # P^T (beta_1 e1), k + 1 entries

    def residual_sq(log_lam: torch.Tensor) -> torch.Tensor:
        lam = log_lam.exp()[:, None]
        return (lam * g[:, :k] / (s.square() + lam)).square().sum(1) + g[:, k].square()

    lo = log_lam_range[0].expand(beta1.shape[0]).clone()
    hi = log_lam_range[1].expand(beta1.shape[0]).clone()
    for _ in range(bisections):
        mid = (lo + hi) / 2
        ok = residual_sq(mid) <= target_sq
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    # lo meets the target when any lam in range does; otherwise it is the smallest lam.
    coeffs = torch.einsum("nji,nj->ni", qh, s / (s.square() + lo.exp()[:, None]) * g[:, :k])
    return coeffs, lo, residual_sq(lo)
