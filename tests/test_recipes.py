"""Each paper's recipe as a config option, checked on a tiny case by hand: VampPrior's log-variance
clamp, WAE's cost scaling and multi-scale kernel, KL warm-up in every VAE-like family; the
two-layer model at the IWAE paper's widths; collapse made visible: each layer's KL and the
active units (Burda et al., 2016) logged per epoch and in evaluation."""

import math
from pathlib import Path

import pytest
import torch
from conftest import TWO_BATCHES, read_events, small_run_overrides
from omegaconf import OmegaConf

from aelab.errors import ConfigError
from aelab.evaluation.active_units import active_unit_metrics, active_units, layer_means
from aelab.models import IWAE, VAE, WAE, LadderVAE, TwoLayerVAE, VampPriorVAE
from aelab.models.wae import mmd
from aelab.validation import check_arguments

MLP8 = {"_target_": "aelab.nets.MLP", "hidden_dims": [8]}
SHAPE = (1, 4, 4)


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


# active units


def test_a_unit_is_active_when_the_variance_of_its_mean_exceeds_a_hundredth():
    """Four images, four units: variances 0, 0.0225, 0.0025 and 1 (np.var, no Bessel
    correction): two above 0.01. Two images at 0 and 0.19: 0.009025 without the correction
    (inactive), 0.01805 with it (it would be active)."""
    means = torch.tensor(
        [[0.0, 0.0, 0.0, 1.0], [0.0, 0.3, 0.1, -1.0], [0.0, 0.0, 0.0, 1.0], [0.0, 0.3, 0.1, -1.0]]
    )
    assert active_units(means) == 2
    assert active_units(means, threshold=0.001) == 3
    assert active_units(torch.tensor([[0.0], [0.19]])) == 0


class TwoLayers(torch.nn.Module):
    """A stand-in with two stochastic layers whose posterior means are known: z1's are the first
    two pixels, z2's a twentieth of the first."""

    device = torch.device("cpu")

    def posterior_means(self, x: torch.Tensor) -> list[torch.Tensor]:
        assert not self.training  # counted in evaluation mode
        pixels = x.flatten(1)
        return [pixels[:, :2], 0.05 * pixels[:, :1]]


def test_active_units_of_each_layer_by_hand():
    """Pixel 0 is 0, 1, 0, 1 over the images (variance 1/4: active), pixel 1 always 1 (0):
    z1 has 1 active unit; z2 = pixel 0 / 20 has variance 1/1600 (inactive)."""
    images = torch.tensor([[0, 255, 7, 9], [255, 255, 1, 2], [0, 255, 3, 4], [255, 255, 5, 6]])
    model = TwoLayers().train()
    metrics = active_unit_metrics(model, images.to(torch.uint8).view(4, 1, 2, 2), "val")
    assert metrics == {
        "val/active_units": 1.0,
        "val/active_units_1": 1.0,
        "val/active_units_2": 0.0,
    }
    assert model.training  # its mode given back


def test_each_family_gives_the_posterior_means_of_each_layer():
    x = binary_images(5)
    images = (x * 255).to(torch.uint8)
    two = TwoLayerVAE(SHAPE, latent_dim=3, top_latent_dim=2, top_hidden_dims=[4], net=MLP8).eval()
    mu1 = two.posterior(x)[0]
    z1, z2 = layer_means(two, images)
    assert torch.allclose(z1, mu1) and torch.allclose(z2, two.up(mu1)[0])
    ladder = LadderVAE(SHAPE, latent_dim=3, upper_latent_dims=[2], upper_hidden_dims=[4], net=MLP8)
    ladder.eval()
    means = ladder.top_down(ladder.bottom_up(x), draw=False)
    pairs = zip(layer_means(ladder, images), means, strict=True)
    assert len(means) == 2 and all(torch.allclose(a, b.q[0]) for a, b in pairs)
    vae = VampPriorVAE(SHAPE, latent_dim=2, num_pseudo_inputs=2, net=MLP8).eval()
    assert torch.allclose(layer_means(vae, images)[0], vae.posterior(x)[0])
    assert active_unit_metrics(WAE(SHAPE, latent_dim=2, net=MLP8), images, "test") == {}


# VampPrior's log-variance clamp


def test_the_vampprior_clamp_clips_the_log_variance_of_data_and_pseudo_inputs():
    model = VampPriorVAE(SHAPE, latent_dim=2, num_pseudo_inputs=3, logvar_clamp=[-6, 2], net=MLP8)
    torch.nn.init.zeros_(model.logvar.weight)
    model.logvar.bias.data = torch.tensor([5.0, -10.0])  # log sigma^2 = 5 and -10 everywhere
    x = binary_images(4)
    assert torch.equal(model.posterior(x)[1], torch.tensor([[2.0, -6.0]]).expand(4, 2))
    _, pseudo_logvar = model.posterior(model.pseudo_images())
    assert torch.equal(pseudo_logvar, torch.tensor([[2.0, -6.0]]).expand(3, 2))
    # the prior is the mixture of the clipped posteriors: here each N(mu_k, diag(e^2, e^-6))
    z = torch.zeros(1, 2)
    mu, logvar = model.posterior(model.pseudo_images())
    components = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    assert torch.allclose(model.log_prior(z), torch.logsumexp(components, -1) - math.log(3))
    unclipped = VampPriorVAE(SHAPE, latent_dim=2, num_pseudo_inputs=3, net=MLP8)
    unclipped.load_state_dict(model.state_dict())  # no new weights: old checkpoints load
    assert torch.equal(unclipped.posterior(x)[1], torch.tensor([[5.0, -10.0]]).expand(4, 2))
    for clamp in ([2, -6], [1.0]):
        with pytest.raises(ConfigError, match=r"^model.logvar_clamp=\[.*\] must be null or"):
            VampPriorVAE(SHAPE, logvar_clamp=clamp, net=MLP8)


# WAE's cost scaling and multi-scale kernel


def test_the_multi_scale_kernel_sums_the_mmd_of_each_scale_by_hand():
    """a = {0, 1}, b = {0, 2}. C = 2: the unbiased MMD is -1/3 (test_families). C = 1: k = 1,
    1/2, 1/5 at squared distances 0, 1, 4: within a 1/2, within b 1/5, across
    2 (1 + 1/5 + 1/2 + 1/2)/4 = 1.1, so MMD = -0.4. Both scales: -0.4 - 1/3."""
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    assert mmd(a, b, scale=1.0).item() == pytest.approx(-0.4)
    assert mmd(a, b, scale=[1.0, 2.0]).item() == pytest.approx(-0.4 - 1 / 3)


def test_wae_weighs_the_squared_error_by_cost_scale_and_sums_the_kernel_scales():
    model = WAE(SHAPE, latent_dim=1, cost_scale=0.05, kernel_scales=[0.5, 1.0], net=MLP8)
    assert model.kernel_scale == [1.0, 2.0]  # C = 2 d times each scale
    x = binary_images(4)
    torch.manual_seed(0)
    terms = model.loss_terms(x, x)
    z = model.encode(x)
    torch.manual_seed(0)
    prior = torch.randn_like(z)
    assert torch.allclose(terms["mmd"], mmd(z, prior, 1.0) + mmd(z, prior, 2.0))
    assert torch.allclose(terms["recon"], (model.decode(z) - x).pow(2).sum() / 4)  # unscaled
    assert torch.allclose(terms["loss"], 0.05 * terms["recon"] + 10 * terms["mmd"])
    with pytest.raises(ConfigError, match=r"^model.kernel_scales=\[\] must be a non-empty list"):
        WAE(SHAPE, kernel_scales=[], net=MLP8)
    with pytest.raises(ConfigError, match=r"^model.cost_scale=-1.0 must be a finite number >= 0"):
        WAE(SHAPE, cost_scale=-1.0, net=MLP8)


# KL warm-up in every VAE-like family


def warming_up(family: str):
    """A tiny model of `family` with a 4-epoch warm-up, one epoch into it (w = 1/4)."""
    common = {"latent_dim": 3, "net": MLP8, "kl_warmup_epochs": 4}
    model = {
        "vae": lambda: VAE(SHAPE, **common),
        "vampprior": lambda: VampPriorVAE(SHAPE, num_pseudo_inputs=2, **common),
        "iwae": lambda: IWAE(SHAPE, k=1, **common),
        "two_layer_vae": lambda: TwoLayerVAE(SHAPE, top_latent_dim=2, **common),
        "ladder_vae": lambda: LadderVAE(
            SHAPE, upper_latent_dims=[2], upper_hidden_dims=[4], **common
        ),
    }[family]()
    model.epoch_progress = 1.0
    return model


@pytest.mark.parametrize("family", ["vae", "vampprior", "iwae", "two_layer_vae", "ladder_vae"])
def test_every_vae_like_family_warms_its_kl_up(family):
    """Training at w = 1/4 minimises recon + KL / 4 (IWAE with k = 1 and the two-layer model:
    their KL sampled); evaluation uses w = 1."""
    model = warming_up(family).train()
    x = binary_images(6)
    torch.manual_seed(0)
    terms = model.loss_terms(x, x)
    assert torch.allclose(terms["loss"], terms["recon"] + 0.25 * terms["kl"], rtol=1e-5)
    model.eval()
    terms = model.loss_terms(x, x)
    assert torch.allclose(terms["loss"], terms["recon"] + terms["kl"], rtol=1e-5)


@pytest.mark.parametrize(
    ("target", "accepted"),
    [
        ("VAE", True),
        ("VampPriorVAE", True),
        ("IWAE", True),
        ("TwoLayerVAE", True),
        ("LadderVAE", True),
        ("WAE", False),
        ("VQVAE", False),
        ("CapacityVAE", False),  # its capacity ramp replaces the warm-up
    ],
)
def test_the_warm_up_key_is_taken_or_refused_in_one_line(target, accepted):
    node = OmegaConf.create({"_target_": f"aelab.models.{target}", "kl_warmup_epochs": 2})
    if accepted:
        check_arguments("model", node)
    else:
        with pytest.raises(ConfigError, match=r"^model.kl_warmup_epochs is not an argument of"):
            check_arguments("model", node)


def test_the_iw_bound_warms_up_inside_each_weight():
    """With k draws the warm-up weighs log p(z) - log q(z|x) inside each log weight:
    loss = -log mean_i exp(log p(x|z_i) + w r_i), and w = 1 is -L_k."""
    model = IWAE(SHAPE, latent_dim=2, k=7, kl_warmup_epochs=4, net=MLP8).train()
    model.epoch_progress = 2.0  # w = 1/2
    x = binary_images(3)
    torch.manual_seed(0)
    terms = model.loss_terms(x, x)
    torch.manual_seed(0)
    log_px, (log_ratio,) = model.weight_terms(x, 7)
    tempered = torch.logsumexp(log_px + 0.5 * log_ratio, 0) - math.log(7)
    assert torch.allclose(terms["loss"], -tempered.mean())
    assert torch.allclose(
        terms["iw_bound"], (torch.logsumexp(log_px + log_ratio, 0) - math.log(7)).mean()
    )


# the two-layer model at the paper's widths, and each layer's KL


def linear_shapes(module: torch.nn.Module) -> list[tuple[int, int]]:
    return [
        (m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear)
    ]


def test_the_two_layer_model_ships_at_the_iwae_papers_widths(compose_cfg, tmp_path):
    """yburda/iwae, experiments.py, layers == 2: q [[200, 200], [100, 100]], p [[100, 100],
    [200, 200]], latent units [100, 50], tanh."""
    from hydra.utils import instantiate

    cfg = compose_cfg("model=two_layer_vae", output_dir=tmp_path)
    model = instantiate(cfg.model, image_shape=[1, 28, 28], _convert_="all")
    assert linear_shapes(model.net.encoder) == [(784, 200), (200, 200)]
    assert (linear_shapes(model.mu), linear_shapes(model.logvar)) == ([(200, 100)],) * 2
    assert linear_shapes(model.up) == [(100, 100), (100, 100), (100, 50), (100, 50)]
    assert linear_shapes(model.down) == [(50, 100), (100, 100), (100, 100), (100, 100)]
    assert linear_shapes(model.net.decoder) == [(100, 200), (200, 200), (200, 784)]
    assert {type(m).__name__ for m in model.modules()} >= {"Tanh"}
    assert not {"ReLU", "LeakyReLU"} & {type(m).__name__ for m in model.modules()}


@pytest.mark.parametrize(
    ("family", "latent_dim"), [("iwae", 50), ("vampprior", 50), ("wae", 8), ("two_layer_vae", 100)]
)
def test_the_families_ship_with_the_network_of_their_table_row(
    compose_cfg, tmp_path, family, latent_dim
):
    table = OmegaConf.load(Path(__file__).parents[1] / "configs" / "table" / "families.yaml")
    assert f"model={family}" in table.rows[family if family != "iwae" else "iwae_k5"]
    cfg = compose_cfg(f"model={family}", output_dir=tmp_path)
    assert (list(cfg.model.net.hidden_dims), cfg.model.net.activation) == ([200, 200], "tanh")
    assert cfg.model.latent_dim == latent_dim


def test_the_two_layer_model_logs_each_layers_kl():
    """Sampled from the draws of log w: recon + kl_1 + kl_2 = -elbo. With every weight 0 all
    four Gaussians are N(0, I) and q equals p in both layers: each KL is exactly 0."""
    model = TwoLayerVAE(SHAPE, latent_dim=3, top_latent_dim=2, top_hidden_dims=[4], net=MLP8, k=3)
    x = binary_images(5)
    terms = model.loss_terms(x, x)
    assert torch.allclose(terms["recon"] + terms["kl_1"] + terms["kl_2"], -terms["elbo"])
    assert torch.allclose(terms["kl"], terms["kl_1"] + terms["kl_2"])
    for parameter in model.parameters():
        parameter.data.zero_()
    terms = model.loss_terms(x, x)
    assert terms["kl_1"].item() == 0.0 and terms["kl_2"].item() == 0.0


def test_a_two_layer_run_logs_each_layers_kl_and_active_units(compose_cfg, data_dir, tmp_path):
    from aelab.training import fit_and_test

    cfg = compose_cfg(
        "model=two_layer_vae",
        "data=mnist",
        *small_run_overrides(data_dir),
        *TWO_BATCHES,
        output_dir=tmp_path,
    )
    metrics = fit_and_test(cfg)
    assert {"test/kl_1", "test/kl_2"} <= set(metrics)
    scalars = set(read_events(tmp_path / "tensorboard").Tags()["scalars"])
    per_layer = {"val/kl_1", "val/kl_2", "val/active_units_1", "val/active_units_2"}
    assert per_layer | {"val/active_units"} <= scalars, sorted(scalars)
