"""FactorVAE (Kim & Mnih, 2018, "Disentangling by Factorising", ICML).

The VAE's networks, and a penalty on the total correlation of the aggregate posterior q(z),
estimated by a discriminator D(z) = P(z was drawn from q(z)) (eq. 2 and Algorithm 1):

    loss   = E_q[-log p(x|z)] + KL(q(z|x) || p(z)) + gamma * TC,       in nats per image
    TC     = KL(q(z) || prod_j q(z_j)) ~ E_q(z)[log D(z) / (1 - D(z))] = E[l_0(z) - l_1(z)]
    D_loss = -1/2 (E_q(z)[log D(z)] + E[log(1 - D(perm(z')))])

D has two logits (l_0: "from q(z)", l_1: "from prod_j q(z_j)"), so log D/(1 - D) is their
difference; it learns to tell codes z ~ q(z|x) from perm(z'), codes of other images whose
every dimension is permuted across the batch independently: draws from prod_j q(z_j). The KL is
analytic (the VAE's); `tc` and `discriminator_loss` are logged beside `recon`, `kl` and `loss`.

Each training batch is split in half (the paper draws two minibatches per step): the first
half trains the VAE, with TC from D at its codes; D learns from those codes against the
permuted codes of the second half. Both gradients are taken at the same weights, in one
backward pass (D's weights held out of TC's, the codes out of D's), then both optimizers step,
as in disentanglement_lib; two backward passes a step would break DDP. `data.batch_size=128`
is the paper's two batches of 64; the VAE sees half of each batch. Validation and test score
the whole batch, D's loss against the batch's own permuted codes.

Two optimizers, under Lightning's manual optimization: `model.optimizer` (the optimizer group)
over every parameter but D's, and `model.discriminator_optimizer` over D's (the paper's Adam,
lr 1e-4, betas (0.5, 0.9); the paper's VAE Adam is 1e-4, `model.optimizer.lr=1e-4`; the
group's 1e-3 here, as every other family). Both are in every checkpoint. What this changes:

- Lightning counts every optimizer step in `trainer.global_step`: two per batch. So
  `trainer.max_steps=2N` trains N batches, `every_n_train_steps` of a checkpoint callback counts
  both steps, and images logged at `global_step` sit at twice the batch count of the scalars
  (which Lightning logs per batch). Training metrics are logged every
  `trainer.log_every_n_steps` batches, as for the other families.
- `model.scheduler` schedules the VAE's optimizer, stepped here at each epoch's end (Lightning
  steps none under manual optimization); `lr` is the VAE's rate, D's stays constant.
- `trainer.gradient_clip_val` and `trainer.accumulate_grad_batches` are refused (Lightning does
  neither under manual optimization).

D is the paper's MLP, `discriminator_layers` (6) hidden layers with LeakyReLU(0.2), but
`discriminator_width` 256 units wide where the paper has 1000 (5 M weights, several times the
VAE's on a CPU; `model.discriminator_width=1000` is the paper's). gamma = 35 as in the paper's
dSprites runs, with a 10-d code.
"""

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from aelab.errors import ConfigError
from aelab.models.arguments import build
from aelab.models.likelihoods import DISCRETE, bits_per_dim
from aelab.models.stages import TRAIN
from aelab.models.vae import VAE
from aelab.validation import building

# the paper's optimizer of D (fused, as the optimizer group's)
PAPER_DISCRIMINATOR_OPTIMIZER = {
    "_target_": "torch.optim.Adam",
    "_partial_": True,
    "lr": 1e-4,
    "betas": [0.5, 0.9],
    "fused": True,
}
Q_Z, PRODUCT = 0, 1  # D's classes: a code from q(z), a code from prod_j q(z_j)


def permute_dims(z: torch.Tensor) -> torch.Tensor:
    """Each column of codes z (batch, D) permuted across the batch, independently of the others:
    every dimension keeps its values (its marginal), their pairing is broken."""
    order = torch.argsort(torch.rand(z.shape, device=z.device), dim=0)
    return torch.gather(z, 0, order)


def total_correlation(logits: torch.Tensor) -> torch.Tensor:
    """The density-ratio estimate of TC: the mean of log D / (1 - D) = l_0 - l_1 over codes
    from q(z)."""
    return (logits[:, Q_Z] - logits[:, PRODUCT]).mean()


def discriminator_loss(q_logits: torch.Tensor, product_logits: torch.Tensor) -> torch.Tensor:
    """D's cross-entropy, the mean of its two halves: codes from q(z) labelled Q_Z, permuted
    codes labelled PRODUCT."""
    q_loss = F.cross_entropy(q_logits, q_logits.new_full((len(q_logits),), Q_Z, dtype=torch.long))
    product_labels = product_logits.new_full((len(product_logits),), PRODUCT, dtype=torch.long)
    return 0.5 * (q_loss + F.cross_entropy(product_logits, product_labels))


def discriminator(latent_dim: int, width: int, layers: int) -> nn.Sequential:
    """`layers` x (Linear to `width`, LeakyReLU(0.2)), then Linear to the two logits."""
    modules: list[nn.Module] = []
    for i in range(layers):
        modules += [nn.Linear(latent_dim if i == 0 else width, width), nn.LeakyReLU(0.2)]
    modules.append(nn.Linear(width if layers else latent_dim, 2))
    return nn.Sequential(*modules)


def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's first and second half (the first one the larger); a batch of one image is
    both halves."""
    middle = (len(x) + 1) // 2
    return x[:middle], (x[middle:] if len(x) > 1 else x)


class FactorVAE(VAE):
    """The VAE plus gamma times the TC that its discriminator `discriminator` estimates."""

    fixed = ("beta", "kl_warmup_epochs")  # the VAE's KL weight and warm-up: gamma weighs TC

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int = 10,
        gamma: float = 35.0,
        discriminator_layers: int = 6,
        discriminator_width: int = 256,
        discriminator_optimizer: Mapping[str, Any] | None = None,
        **vae: Any,
    ) -> None:
        if gamma < 0:
            raise ConfigError(f"model.gamma={gamma} must be >= 0")
        if discriminator_layers < 0 or discriminator_width < 1:
            raise ConfigError(
                f"model.discriminator_layers={discriminator_layers} must be >= 0 and "
                f"model.discriminator_width={discriminator_width} >= 1"
            )
        super().__init__(image_shape, latent_dim, **vae)
        self.gamma = gamma
        self.discriminator = discriminator(latent_dim, discriminator_width, discriminator_layers)
        with building("model.discriminator_optimizer"):
            self.discriminator_factory = build(
                discriminator_optimizer or PAPER_DISCRIMINATOR_OPTIMIZER
            )
        self.automatic_optimization = False

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z ~ q(z|x) and q's (mu, log sigma^2)."""
        mu, logvar = self.posterior(x)
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu), mu, logvar

    def vae_terms(
        self, x: torch.Tensor, target: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The VAE's terms with gamma * TC in the loss, and the codes z they were drawn at."""
        z, mu, logvar = self.codes(x)
        batch = x.shape[0]
        recon = self.neg_log_likelihood(self.net.decoder(z), target) / batch
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / batch
        tc = total_correlation(self.discriminator(z))
        terms = {"loss": recon + kl + self.gamma * tc, "recon": recon, "kl": kl, "tc": tc}
        if self.likelihood in DISCRETE:
            terms["bpd"] = bits_per_dim(recon + kl, self.dims)  # of -ELBO
        return terms, z

    def discriminator_terms(self, z: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """D's loss on codes z against the permuted codes `other`, neither passing gradients to
        the encoder."""
        product = permute_dims(other.detach())
        return discriminator_loss(self.discriminator(z.detach()), self.discriminator(product))

    def loss_terms(self, x: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The whole batch's terms, D's loss against the batch's own permuted codes."""
        terms, z = self.vae_terms(x, target)
        terms["discriminator_loss"] = self.discriminator_terms(z, z)
        return terms

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """One update of the VAE (on the first half of the batch) and one of D, both from the
        gradients at the same weights, of one backward pass: DDP allows one per step."""
        x, _ = batch
        self.epoch_progress = self.current_epoch + batch_idx / max(
            1, self.trainer.num_training_batches
        )
        logged = (self.global_step // 2 + 1) % self.trainer.log_every_n_steps == 0  # type: ignore[attr-defined]
        vae_optimizer, discriminator_optimizer = cast(list, self.optimizers())
        first, second = halves(x)
        with self.toggled_optimizer(vae_optimizer):  # D's weights fixed: TC's gradient goes to z
            terms, z = self.vae_terms(self.corrupt(first), first)
        with torch.no_grad():
            other = self.codes(self.corrupt(second))[0]
        terms["discriminator_loss"] = self.discriminator_terms(z, other)  # no gradient to z
        vae_optimizer.zero_grad()
        discriminator_optimizer.zero_grad()
        self.manual_backward(terms["loss"] + terms["discriminator_loss"])
        vae_optimizer.step()
        discriminator_optimizer.step()
        if logged:  # the batches Lightning's logger writes: batch counts, not optimizer steps
            values = {f"{TRAIN}/{name}": v.detach() for name, v in terms.items()}
            self.log_dict(values, sync_dist=True)
        return terms["loss"].detach()

    def on_train_epoch_end(self) -> None:
        """Step the VAE's schedule, once per epoch as for the other families."""
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()  # type: ignore[union-attr]

    def configure_callbacks(self) -> list:
        """Refuse what Lightning refuses under manual optimization, as one line naming the key:
        the first hook that sees the Trainer before Lightning checks it."""
        trainer = self.trainer
        if trainer.state.fn == TrainerFn.FITTING:
            for key, value, allowed in (
                ("gradient_clip_val", trainer.gradient_clip_val or None, None),
                ("accumulate_grad_batches", trainer.accumulate_grad_batches, 1),
            ):
                if value != allowed:
                    raise ConfigError(
                        f"trainer.{key}={value} is not supported by model=factor_vae, which steps "
                        "its two optimizers itself (Lightning's manual optimization); set it to "
                        f"{'null' if allowed is None else allowed}"
                    )
        return []

    def configure_optimizers(self) -> Any:
        """[the VAE's optimizer, D's], and the VAE's scheduler if one is set."""
        if self.optimizer_factory is None:
            raise ConfigError("model.optimizer is not set; choose one, e.g. optimizer=adam")
        own = {id(p) for p in self.discriminator.parameters()}
        with building("model.optimizer"):
            vae = self.optimizer_factory([p for p in self.parameters() if id(p) not in own])
        with building("model.discriminator_optimizer"):
            optimizers = [vae, self.discriminator_factory(self.discriminator.parameters())]
        if self.scheduler_factory is None:
            return optimizers
        with building("model.scheduler"):
            return optimizers, [{"scheduler": self.scheduler_factory(vae), "interval": "epoch"}]
