"""Tikhonov solutions for every weight from one Krylov basis, for the discrepancy principle.

With x = x0 + d, argmin_x ||y - A x||^2 + lam ||x - x0||^2 solves
(A^T A + lam I) d = b with b = A^T (y - A x0), whose right-hand side does not depend on
lam. Lanczos on A^T A from b gives an orthonormal basis V_k with V_k^T A^T A V_k = T_k
(tridiagonal) and V_k^T b = ||b|| e1, and Tikhonov restricted to span(V_k) is
d = V_k (T_k + lam I)^-1 ||b|| e1 for every lam at once. Searching lam by bisection
then costs no operator calls: one Lanczos run replaces a conjugate-gradient solve per
bisection step (about 13 of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..operators.base import LinearOperator


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


@dataclass
class TikhonovFit:
    x: torch.Tensor  # the solutions
    rms: torch.Tensor  # (N,) their residual RMS
    lam: torch.Tensor  # (N,) the weight picked per image


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
    target_rms: float,
    *,
    lam_range: tuple[float, float] = (1e-4, 1e4),
    bisections: int = 30,
    tol: float = 1e-6,
    max_iter: int = 200,
) -> TikhonovFit:
    """Per image, the Tikhonov solution around ``x0`` with the largest lam in
    ``lam_range`` whose residual RMS ||y - A x|| / sqrt(numel of y) is at most
    ``target_rms`` (the smallest lam if none is), that residual RMS and that lam.

    Lanczos (with full reorthogonalisation) runs until the normal-equation residual of
    the chosen lam is below ``tol`` relative to ||b||, as conjugate gradients would be
    stopped, or for ``max_iter`` operator round trips.
    """
    n = y.shape[0]
    m = y[0].numel()
    r0 = y - operator(x0)
    b = operator.adjoint(r0)
    beta0 = _dot(b, b).sqrt()
    scale = torch.where(beta0 > 0, beta0, torch.ones_like(beta0))
    basis = [b / scale.view(-1, *[1] * (b.ndim - 1))]
    images = [operator(basis[0])]  # A v_j, kept to evaluate residuals without operator calls
    alphas, betas = [], []
    log_lo, log_hi = torch.tensor(lam_range, dtype=torch.float64).log()
    while True:
        v, av = basis[-1], images[-1]
        w = operator.adjoint(av)
        alphas.append(_dot(v, w))
        for u in basis:  # full reorthogonalisation: plain Lanczos loses orthogonality fast
            w = w - _dot(u, w).view(-1, *[1] * (w.ndim - 1)) * u
        beta = _dot(w, w).sqrt()
        betas.append(beta)
        coeffs, log_lam = _bisect(
            alphas, betas[:-1], beta0, r0, images, target_rms, m, log_lo, log_hi, bisections
        )
        converged = (beta.double() * coeffs[:, -1].abs() <= tol * beta0.double()) | (beta <= 1e-12 * scale)
        if bool(converged.all()) or len(basis) >= max_iter:
            break
        # A basis that became invariant (beta ~ 0) continues with zeros, leaving T block-diagonal.
        inverse = torch.where(beta > 1e-12 * scale, 1 / beta, torch.zeros_like(beta))
        basis.append(w * inverse.view(-1, *[1] * (w.ndim - 1)))
        images.append(operator(basis[-1]))
    stacked = torch.stack(basis[: coeffs.shape[1]], 1)
    shape = (n, coeffs.shape[1], *[1] * (x0.ndim - 1))
    x = x0 + (coeffs.to(x0.dtype).view(shape) * stacked).sum(1)
    rms = _residual(coeffs, r0, images, m)
    return TikhonovFit(x, rms.to(y.dtype), log_lam.exp().to(y.dtype))


def _bisect(alphas, betas, beta0, r0, images, target_rms, m, log_lo, log_hi, bisections):
    """Coefficients in the current basis for the lam picked per image by bisection on
    log lam, and that log lam."""
    t = torch.diag_embed(torch.stack(alphas, 1).double())
    if betas:
        off = torch.stack(betas, 1).double()
        t = t + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    eigenvalues, q = torch.linalg.eigh(t)
    rhs = beta0.double()[:, None] * q[:, 0, :]  # Q^T (||b|| e1)

    def solve(log_lam: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nij,nj->ni", q, rhs / (eigenvalues + log_lam.exp()[:, None]))

    n = beta0.shape[0]
    lo = torch.full((n,), float(log_lo), dtype=torch.float64, device=beta0.device)
    hi = torch.full((n,), float(log_hi), dtype=torch.float64, device=beta0.device)
    for _ in range(bisections):
        mid = (lo + hi) / 2
        ok = _residual(solve(mid), r0, images, m) <= target_rms
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    # lo meets the target when any lam in range does; otherwise it is the smallest lam.
    return solve(lo), lo


def _residual(coeffs: torch.Tensor, r0: torch.Tensor, images: list[torch.Tensor], m: int) -> torch.Tensor:
    k = coeffs.shape[1]
    fitted = (coeffs.to(r0.dtype).view(*coeffs.shape, *[1] * (r0.ndim - 1)) * torch.stack(images[:k], 1)).sum(
        1
    )
    return ((r0 - fitted).double().flatten(1).square().sum(1) / m).sqrt()
