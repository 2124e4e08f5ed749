"""Base classes for forward models y = A(x) acting on images in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class Operator(nn.Module):
    """A differentiable forward model: ``op(x)`` is the noiseless measurement of ``x``.

    ``x`` is an ``(N, C, H, W)`` image batch with intensities in [0, 1].
    """

    linear: bool = False
    # The kind of measurement, by which solvers look up what their sources set per task:
    # "blur", "gaussian-blur", "superres", "inpainting", "nonlinear-blur", "ct" or "other".
    task: str = "other"
    # Whether its parameters differ between the images of a batch (one mask per image), so
    # that it applies to the whole batch only, not to a subset of its images.
    batch_parameters: bool = False

    def params(self) -> dict:
        """JSON-serialisable parameters, for reports."""
        return {"name": type(self).__name__}

    def measurement_count(self, y: torch.Tensor) -> torch.Tensor:
        """m per measurement in ``y``, shape (N,): how many of its entries carry data. The
        residual RMS and the discrepancy target sigma_y sqrt(m) count only these."""
        return torch.full((y.shape[0],), float(y[0].numel()), dtype=torch.float64, device=y.device)

    def observed(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` with its entries that carry no data set to zero, as ``forward`` leaves them
        (inpainting's missing pixels); ``y`` itself where every entry is data. Solvers fit
        this, so a measurement holding anything at the unobserved entries is not overfit."""
        return y


class LinearOperator(Operator):
    """A linear forward model with an adjoint and a regularised least-squares solve."""

    linear = True
    # Whether ``solve`` costs a few operator calls whatever lam is (closed form or
    # well-preconditioned), so that a search over lam may call it repeatedly. Without it,
    # the discrepancy search runs one Krylov basis for all lam (solvers/krylov.py).
    fast_solve = False

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """A^T y, the adjoint of ``forward`` (its transpose for real tensors)."""
        raise NotImplementedError

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """A^T A x."""
        return self.adjoint(self(x))

    def solve(
        self,
        y: torch.Tensor,
        x0: torch.Tensor,
        lam: float | torch.Tensor,
        *,
        tol: float = 1e-6,
        max_iter: int = 200,
    ) -> torch.Tensor:
        """argmin_x ||y - A x||^2 + lam ||x - x0||^2, per batch element.

        ``lam`` is a float or a tensor of shape ``(N,)``. ``tol`` and ``max_iter`` bound an
        iterative solve; operators with an exact one ignore them. How an operator solves is
        its ``_solve``.
        """
        return self._solve(y, x0, _per_sample(lam, x0), tol=tol, max_iter=max_iter)

    def _solve(
        self, y: torch.Tensor, x0: torch.Tensor, lam: torch.Tensor, *, tol: float, max_iter: int
    ) -> torch.Tensor:
        """``solve`` with ``lam`` shaped to broadcast over each batch element's image. The
        default is conjugate gradients on (A^T A + lam I) x = A^T y + lam x0, warm-started at
        ``x0``, preconditioned when the operator has a ``_preconditioner``."""
        rhs = self.adjoint(y) + lam * x0
        return conjugate_gradient(
            lambda v: self.normal(v) + lam * v,
            rhs,
            x0,
            tol=tol,
            max_iter=max_iter,
            precond=self._preconditioner(x0, lam),
        )

    def _preconditioner(
        self, like: torch.Tensor, lam: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """An approximate inverse of (A^T A + lam I) for images shaped as ``like`` (see
        ``conjugate_gradient``), or None for plain conjugate gradients."""
        return None


def _per_sample(lam: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    lam = torch.as_tensor(lam, dtype=like.dtype, device=like.device)
    return lam.reshape(-1, *([1] * (like.ndim - 1))) if lam.ndim else lam


def conjugate_gradient(
    apply,
    rhs: torch.Tensor,
    x0: torch.Tensor,
    *,
    tol: float = 1e-6,
    max_iter: int = 200,
    precond: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Solve apply(x) = rhs for a symmetric positive (semi-)definite ``apply``,
    independently for each batch element, until ||r|| <= tol * ||rhs|| per element.

    ``precond``, if given, applies a symmetric positive definite approximation of the
    inverse of ``apply`` (preconditioned CG); the stopping test stays on the true residual.
    """
    dims = tuple(range(1, rhs.ndim))
    tiny = torch.finfo(rhs.dtype).tiny

    def dot(a, b):
        return (a * b).sum(dims, keepdim=True)

    def precondition(r):
        return r if precond is None else precond(r)

    x = x0.clone()
    r = rhs - apply(x)
    z = precondition(r)
    p = z.clone()
    rz = dot(r, z)
    rr = dot(r, r)
    target = (tol**2) * dot(rhs, rhs)
    for _ in range(max_iter):
        if bool((rr <= target).all()):
            break
        ap = apply(p)
        pap = dot(p, ap)
        # Elements that already converged keep alpha = 0 so they stop moving.
        active = rr > target
        alpha = torch.where(active, rz / pap.clamp_min(tiny), torch.zeros_like(rz))
        x = x + alpha * p
        r = r - alpha * ap
        z = precondition(r)
        rz_new = dot(r, z)
        beta = torch.where(active, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
        rr = dot(r, r)
    return x
