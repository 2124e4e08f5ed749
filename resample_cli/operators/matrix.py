"""A dense linear operator, for small problems with known answers."""

from __future__ import annotations

import torch

from .base import LinearOperator


class MatrixOperator(LinearOperator):
    """y = M vec(x) for images of shape ``image_shape`` (C, H, W); y has shape (N, m).

    The least-squares solve is exact (a dense linear solve), so it suits tests and the
    exact-posterior benchmark, not real images.
    """

    fast_solve = True

    def __init__(self, matrix: torch.Tensor, image_shape: tuple[int, int, int]):
        super().__init__()
        self.register_buffer("matrix", torch.as_tensor(matrix))
        self.image_shape = tuple(image_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.matrix.T.to(x.dtype)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.matrix.to(y.dtype)).reshape(y.shape[0], *self.image_shape)

    def solve(self, y, x0, lam, *, tol=1e-6, max_iter=200) -> torch.Tensor:
        m = self.matrix.to(torch.float64)
        lam = (
            torch.as_tensor(lam, dtype=torch.float64, device=m.device)
            .reshape(-1, 1, 1)
            .expand(x0.shape[0], 1, 1)
        )
        eye = torch.eye(m.shape[1], dtype=torch.float64, device=m.device)
        rhs = (y.to(m) @ m + lam[:, :, 0] * x0.flatten(1).to(m)).unsqueeze(-1)
        x = torch.linalg.solve(m.T @ m + lam * eye, rhs).squeeze(-1)
        return x.reshape(x0.shape).to(x0.dtype)

    def params(self) -> dict:
        return {"name": "MatrixOperator", "shape": list(self.matrix.shape)}
