"""A latent prior whose score is known exactly: a Gaussian mixture on the clean
latent and a fixed linear decoder.

With p(z0) = sum_k w_k N(mu_k, S_k), the variance-preserving forward process gives
p_t(z) = sum_k w_k N(sqrt(abar) mu_k, C_k) with C_k = abar S_k + (1 - abar) I, so

    eps(z, t) = sqrt(1 - abar) sum_k r_k(z) C_k^{-1} (z - sqrt(abar) mu_k),

r_k the responsibilities. With a linear measurement of the decoded image the posterior
is again a mixture (``posterior``), which tests and benchmarks sample exactly.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler

from .base import LatentPrior, PriorInfo


class GaussianMixturePrior(LatentPrior):
    """Latent z0 ~ sum_k w_k N(mu_k, S_k) of shape ``latent_shape``; the decoder is
    x = reshape(decoder @ flatten(z)) in [-1, 1] (identity when ``decoder`` is None) and
    the encoder its pseudo-inverse."""

    def __init__(
        self,
        weights: torch.Tensor,
        means: torch.Tensor,
        covs: torch.Tensor,
        latent_shape: tuple[int, int, int],
        *,
        decoder: torch.Tensor | None = None,
        image_shape: tuple[int, int, int] | None = None,
        scheduler: DDIMScheduler | None = None,
    ):
        d = math.prod(latent_shape)
        self.weights = torch.as_tensor(weights, dtype=torch.float64) / torch.as_tensor(weights).sum()
        self.means = torch.as_tensor(means, dtype=torch.float64).reshape(-1, d)
        self.covs = torch.as_tensor(covs, dtype=torch.float64).reshape(-1, d, d)
        self._latent_shape = tuple(latent_shape)
        self.decoder = torch.eye(d, dtype=torch.float64) if decoder is None else decoder.to(torch.float64)
        self.image_shape = tuple(image_shape or latent_shape)
        self.scheduler = scheduler or DDIMScheduler(
            num_train_timesteps=1000, beta_schedule="linear", set_alpha_to_one=True
        )
        self.info = PriorInfo(name="gaussian-mixture")
        self.image_channels = self.image_shape[0]
        self.latent_channels = latent_shape[0]
        self.downsample_factor = 1
        self.latent_scale = 1.0
        self.device = torch.device("cpu")
        self.dtype = torch.float64

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        if (height, width) != self.image_shape[1:]:
            raise ValueError(f"this prior models {self.image_shape[1:]} images, not {(height, width)}")
        return self._latent_shape

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = z.flatten(1).to(torch.float64) @ self.decoder.T
        return x.reshape(z.shape[0], *self.image_shape).to(z.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.linalg.lstsq(self.decoder, x.flatten(1).to(torch.float64).T).solution.T
        return z.reshape(x.shape[0], *self._latent_shape).to(x.dtype)

    def eps(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1)
        if bool((t != t[0]).any()):
            return torch.cat([self.eps(zi[None], ti[None]) for zi, ti in zip(z, t, strict=True)])
        abar = float(self.alphas_cumprod[int(t[0])])
        flat = z.flatten(1).to(torch.float64)
        d = flat.shape[1]
        chol = torch.linalg.cholesky(abar * self.covs + (1 - abar) * torch.eye(d, dtype=torch.float64))
        diff = flat[:, None, :] - math.sqrt(abar) * self.means  # (N, K, d)
        white = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        resp = torch.softmax(self.weights.log() - 0.5 * (white.pow(2).sum(-1) + logdet), dim=1)  # (N, K)
        score = torch.cholesky_solve(diff.unsqueeze(-1), chol).squeeze(-1)  # C_k^{-1} diff
        eps = math.sqrt(1 - abar) * (resp.unsqueeze(-1) * score).sum(1)
        return eps.reshape(z.shape).to(z.dtype)

    def posterior(
        self, measure: torch.Tensor, offset: torch.Tensor, y: torch.Tensor, noise_std: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exact posterior of z0 given y = measure @ z0 + offset + n, n ~ N(0, noise_std^2 I):
        mixture (weights, means, covs) with S'_k = (S_k^-1 + M^T M / s^2)^-1,
        mu'_k = S'_k (S_k^-1 mu_k + M^T (y - offset) / s^2),
        w'_k proportional to w_k N(y - offset; M mu_k, s^2 I + M S_k M^T)."""
        m = measure.to(torch.float64)
        r = (y - offset).to(torch.float64).flatten()
        s2 = noise_std**2
        prec = torch.linalg.inv(self.covs)
        post_cov = torch.linalg.inv(prec + m.T @ m / s2)
        post_mean = (post_cov @ (prec @ self.means.unsqueeze(-1) + (m.T @ r / s2).unsqueeze(-1))).squeeze(-1)
        marg_cov = s2 * torch.eye(m.shape[0], dtype=torch.float64) + m @ self.covs @ m.T
        marg = torch.distributions.MultivariateNormal(self.means @ m.T, covariance_matrix=marg_cov)
        post_w = torch.softmax(self.weights.log() + marg.log_prob(r), 0)
        return post_w, post_mean, post_cov

    def sample_posterior(
        self,
        measure: torch.Tensor,
        offset: torch.Tensor,
        y: torch.Tensor,
        noise_std: float,
        n: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """n exact draws of z0 from ``posterior``, shape (n, d)."""
        w, mu, cov = self.posterior(measure, offset, y, noise_std)
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        chol = torch.linalg.cholesky(cov)
        noise = torch.randn(n, mu.shape[1], 1, generator=generator, dtype=torch.float64)
        return mu[k] + (chol[k] @ noise).squeeze(-1)
