"""beta-TCVAE (Chen, Li, Grosse & Duvenaud, 2018, "Isolating Sources of Disentanglement in
Variational Autoencoders", NeurIPS).

The VAE's networks; the KL term of the ELBO, averaged over the data, split into three (eq. 2):

    E_p(x)[KL(q(z|x) || p(z))] = I_q(x; z)                              index-code MI   `mi`
                               + KL(q(z) || prod_j q(z_j))              total corr.     `tc`
                               + sum_j KL(q(z_j) || p(z_j))             dimension-wise  `dwkl`
    loss = E_q[-log p(x|z)] + alpha * mi + beta * tc + gamma * dwkl,    in nats per image

each term a mean over the batch of log-density differences at one draw z_i ~ q(z|x_i):
mi = log q(z_i|x_i) - log q(z_i), tc = log q(z_i) - sum_j log q(z_ij),
dwkl = sum_j log q(z_ij) - log p(z_i). The aggregate posterior q(z) = (1/N) sum_n q(z|x_n) and
its marginals q(z_j) are estimated by minibatch-weighted sampling (MWS, eq. 5 and the authors'
code, rtqichen/beta-tcvae): for a batch of M images out of N,

    log q(z_i)   ~ logsumexp_k log q(z_i | x_k)  - log(N M)
    log q(z_ij)  ~ logsumexp_k log q(z_ij | x_k) - log(N M)         k = 1..M, i itself included

Against the minibatch averages log (1/M) sum_k, each of these is lower by log N (the paper's
importance weight 1/N of the batches that hold x_i), so with D = latent_dim the logged `mi` is
higher by log N, `tc` by (D - 1) log N and `dwkl` lower by D log N (usually below 0 then):
constants, which leave the gradients and the sum of the three as they are, and which hold the
numbers of runs on datasets of different sizes apart. The three terms always sum to
E[log q(z|x) - log p(z)] of the same draws (a sampled KL); `kl` is the analytic KL, logged for
comparison with the VAE.

N is the size of the training split: `dataset_size`, or, when it is null, the length of the
datamodule's `train_set`, read when Lightning sets the model up (fit, validate or test) and kept
in the checkpoint (the `dataset_size` buffer), so that validation, test and a later `aelab.eval`
use the same N.

Defaults are the authors' dSprites command (README: `--beta 6 --tcvae`): alpha = gamma = 1,
beta = 6, a 10-d code; they train with batches of 2048, where MWS is less biased than at 128.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.distributions import Normal

from aelab.errors import ConfigError
from aelab.models.likelihoods import DISCRETE, bits_per_dim
from aelab.models.vae import VAE


def mws_log_densities(
    z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log q(z_i|x_i), log q(z_i), sum_j log q(z_ij)) of each draw z_i, shapes (M,), from the
    batch's posteriors N(mu_k, exp(logvar_k)), k = 1..M, by minibatch-weighted sampling."""
    # log q(z_ij | x_k), shape (M, M, D): draw i against image k's posterior, per dimension
    per_dim = Normal(mu[None], torch.exp(0.5 * logvar[None])).log_prob(z[:, None])
    log_nm = math.log(dataset_size * z.shape[0])
    log_q_zx = torch.diagonal(per_dim).sum(0)  # k = i
    log_qz = torch.logsumexp(per_dim.sum(2), dim=1) - log_nm
    log_prod_qzj = (torch.logsumexp(per_dim, dim=1) - log_nm).sum(1)
    return log_q_zx, log_qz, log_prod_qzj


def read_dataset_size(model: "BetaTCVAE", incompatible_keys: Any) -> None:
    """After `load_state_dict`: the checkpoint's N as a number too."""
    model.n = int(model.dataset_size)


class BetaTCVAE(VAE):
    """The VAE with its KL split into `mi`, `tc` and `dwkl`, weighted by alpha, beta and gamma."""

    dataset_size: torch.Tensor  # N, a buffer

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 10,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        dataset_size: int | None = None,
        **vae: Any,
    ) -> None:
        for key, weight in (("alpha", alpha), ("gamma", gamma)):
            if weight < 0:
                raise ConfigError(f"model.{key}={weight} must be >= 0")
        if dataset_size is not None and dataset_size < 1:
            raise ConfigError(
                f"model.dataset_size={dataset_size} must be >= 1, or null for the training "
                "split's size"
            )
        # the VAE checks beta >= 0; its KL warm-up is no argument here
        super().__init__(image_shape, latent_dim, beta=beta, **vae)
        self.alpha = alpha
        self.gamma = gamma
        self.given_dataset_size = dataset_size
        # N of the MWS estimate, 0 until known: a buffer, so that checkpoints keep it, and its
        # value as a number, which each step reads without waiting for the device
        self.register_buffer("dataset_size", torch.tensor(dataset_size or 0))
        self.n = dataset_size or 0
        self.register_load_state_dict_post_hook(read_dataset_size)

    def setup(self, stage: str) -> None:
        """N from the datamodule's training split: on every fit when `dataset_size` is null
        (fine-tuning on other data counts that data), otherwise only when no checkpoint gave
        one. A resumed fit then loads the checkpoint's N over it: the same split's."""
        if self.given_dataset_size is not None or (stage != "fit" and self.n > 0):
            return
        # Lightning's connectors set this Trainer attribute without declaring it
        datamodule = self.trainer.datamodule  # type: ignore[attr-defined]
        train_set = getattr(datamodule, "train_set", None)
        if train_set is not None:
            self.n = len(train_set)
            self.dataset_size.fill_(self.n)

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.n < 1:
            raise ConfigError(
                "model.dataset_size is null and no training split was counted (no datamodule "
                "with a train_set, no checkpoint); set model.dataset_size to its size"
            )
        mu, logvar = self.posterior(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        batch = x.shape[0]
        recon = self.neg_log_likelihood(self.net.decoder(z), target) / batch
        log_q_zx, log_qz, log_prod_qzj = mws_log_densities(z, mu, logvar, self.n)
        mi = (log_q_zx - log_qz).mean()
        tc = (log_qz - log_prod_qzj).mean()
        dwkl = (log_prod_qzj - self.log_prior(z)).mean()
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
        loss = recon + self.alpha * mi + self.beta * tc + self.gamma * dwkl
        terms = {"loss": loss, "recon": recon, "mi": mi, "tc": tc, "dwkl": dwkl, "kl": kl}
        if self.likelihood in DISCRETE:
            terms["bpd"] = bits_per_dim(recon + kl, self.dims)  # of -ELBO, whatever the weights
        return terms
