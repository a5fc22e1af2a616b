import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from aelab.errors import ConfigError
from aelab.models import IWAE, VAE, Autoencoder, AutoencoderModule
from aelab.validation import check_arguments


def mlp(*hidden_dims: int, **extra) -> dict:
    """The config of an MLP network, as `net=mlp model.net.hidden_dims=[...]` composes it."""
    return {"_target_": "aelab.nets.MLP", "hidden_dims": list(hidden_dims), **extra}


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 16, 20)])
def test_autoencoder_shapes_follow_the_image(shape):
    model = Autoencoder(shape, latent_dim=3, net=mlp(32, 8))
    x = torch.rand(5, *shape)
    assert model.encode(x).shape == (5, 3)
    x_hat = model.reconstruct(x)
    assert x_hat.shape == x.shape and x_hat.min() >= 0 and x_hat.max() <= 1
    assert torch.allclose(model.loss_terms(x, x)["loss"], F.mse_loss(x_hat, x))


def test_deep_ae_layer_sizes():
    model = Autoencoder((1, 28, 28), latent_dim=3, net=mlp(128, 64, 12))
    path = [model.net.encoder, model.to_code, model.net.decoder]  # in the order data flows
    linear = [m for part in path for m in part.modules() if isinstance(m, torch.nn.Linear)]
    sizes = [(m.in_features, m.out_features) for m in linear]
    assert sizes == [
        (784, 128),
        (128, 64),
        (64, 12),
        (12, 3),
        (3, 12),
        (12, 64),
        (64, 128),
        (128, 784),
    ]


def test_vae_loss_is_bce_sum_plus_analytic_kl_per_image():
    model = VAE((1, 28, 28), latent_dim=20, net=mlp(400))
    x = torch.rand(4, 1, 28, 28).round()
    torch.manual_seed(0)
    terms = model.loss_terms(x, x)

    torch.manual_seed(0)
    mu, logvar = model.posterior(x)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    p = model.decode(z)
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).sum() / 4
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / 4
    assert torch.allclose(terms["recon"], bce, rtol=1e-4)
    assert torch.allclose(terms["kl"], kl, rtol=1e-5)
    assert torch.allclose(terms["loss"], bce + kl, rtol=1e-4)
    assert model.sample(6).shape == (6, 1, 28, 28)


def test_unknown_activation_names_the_key():
    with pytest.raises(ConfigError, match=r"model.net.activation='swishy' is not an activation"):
        Autoencoder((1, 28, 28), latent_dim=3, net=mlp(8, activation="swishy"))
    with pytest.raises(ConfigError, match=r"model.latent_activation='swishy' is not an"):
        Autoencoder((1, 28, 28), latent_dim=3, latent_activation="swishy")


def test_optimizer_comes_from_the_partial():
    model = VAE((1, 28, 28), optimizer=partial(torch.optim.SGD, lr=0.5))
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.5
    from_config = VAE(
        (1, 28, 28), optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.25}
    )
    assert from_config.configure_optimizers().defaults["lr"] == 0.25
    assert from_config.hparams["optimizer"]["lr"] == 0.25  # plain data, not an object


def test_autoencoder_loss_on_a_hand_computed_case():
    """MSE per pixel: with every weight zero the code is 0 and the output sigmoid(0) = 0.5."""
    model = Autoencoder((1, 1, 2), latent_dim=1, net=mlp())
    for parameter in model.parameters():
        torch.nn.init.zeros_(parameter)
    x = torch.tensor([[[[0.0, 1.0]]], [[[0.5, 0.25]]]])
    expected = ((0.5**2) + (0.5**2) + 0 + (0.25**2)) / 4
    assert model.loss_terms(x, x)["loss"].item() == pytest.approx(expected)


def test_vae_loss_on_a_hand_computed_case():
    """With zero weights, mu = 0, log sigma^2 = 0 (KL = 0 exactly), and every pixel has
    probability 1/2: the reconstruction term is log 2 nats per pixel, whatever z is drawn."""
    model = VAE((1, 2, 2), latent_dim=3, net=mlp(4))
    for parameter in model.parameters():
        torch.nn.init.zeros_(parameter)
    x = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    terms = model.loss_terms(x, x)
    assert terms["kl"].item() == 0.0
    assert terms["recon"].item() == pytest.approx(4 * math.log(2))
    assert terms["loss"].item() == pytest.approx(4 * math.log(2))


class L1Autoencoder(AutoencoderModule):
    """A model of one's own as docs/extending.md writes it: its own arguments, then `**shared`."""

    def __init__(self, image_shape, latent_dim=8, **shared):
        super().__init__(image_shape, latent_dim, **shared)
        self.to_code = torch.nn.Linear(self.net.features, latent_dim)

    def encode(self, x):
        return self.to_code(self.net.encoder(x))

    def decode(self, z):
        return torch.sigmoid(self.net.decoder(z))

    def loss_terms(self, x, target):
        return {"loss": F.l1_loss(self.reconstruct(x), target)}


def test_a_model_hands_the_shared_arguments_on_and_all_are_saved():
    sgd = partial(torch.optim.SGD, lr=0.5)
    model = L1Autoencoder((1, 4, 4), 2, net=mlp(8), noise="masking", noise_level=0.5, optimizer=sgd)
    assert model.noise == "masking" and model.net.features == 8
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)
    # every argument, its own and AutoencoderModule's, but the optimizer given as an object
    assert dict(model.hparams) == {
        "image_shape": (1, 4, 4),
        "latent_dim": 2,
        "net": mlp(8),
        "scheduler": None,
        "compile": False,
        "noise": "masking",
        "noise_level": 0.5,
        "init": "default",
        "output_bias": "default",
    }
    # IWAE goes through the VAE, whose beta it does not take: not saved, so that
    # IWAE(**hparams) rebuilds it from a checkpoint
    iwae = IWAE((1, 4, 4), latent_dim=2, net=mlp(8))
    assert set(iwae.hparams) == {
        *("image_shape", "latent_dim", "k", "likelihood", "gaussian_std", "kl_warmup_epochs"),
        *("net", "optimizer", "scheduler", "compile", "noise", "noise_level"),
        *("init", "output_bias"),
    }
    assert IWAE(**iwae.hparams).k == 5


def test_a_misspelt_or_mistyped_shared_key_is_refused_naming_it():
    """check_arguments follows a model's `**shared` to AutoencoderModule's arguments."""
    from omegaconf import OmegaConf

    def node(**keys):
        return OmegaConf.create({"_target_": f"{__name__}.L1Autoencoder", "latent_dim": 2, **keys})

    check_arguments("model", node(noise="gaussian", noise_level=0.1, compile=False, net=mlp(4)))
    takes = (
        r"\(it takes latent_dim, net, scheduler, compile, noise, noise_level, init, output_bias\)"
    )
    with pytest.raises(ConfigError, match=rf"^model.noize is not an argument of \S+ {takes}"):
        check_arguments("model", node(noize="gaussian"))
    with pytest.raises(
        ConfigError, match=r"^model.noise_level='x' is not allowed; it must be float"
    ):
        check_arguments("model", node(noise_level="x"))
    with pytest.raises(ConfigError, match=r"^model.beta is not an argument of aelab.models.IWAE"):
        check_arguments("model", OmegaConf.create({"_target_": "aelab.models.IWAE", "beta": 2.0}))


def test_a_model_yaml_of_ones_own_takes_the_shared_block_and_the_optimizer_group(
    compose_cfg, tmp_path
):
    """docs/extending.md's recipe: `defaults: [shared/module, _self_]` and the model's keys."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "l1.yaml").write_text(
        "defaults:\n  - shared/module\n  - _self_\n\n"
        f"_target_: {__name__}.L1Autoencoder\nlatent_dim: 4\noptimizer:\n  lr: 3.0e-3\n"
    )
    cfg = compose_cfg(f"hydra.searchpath=[file://{tmp_path}]", "model=l1", "optimizer=sgd")
    assert cfg.model._recursive_ is False and cfg.model.noise is None
    assert cfg.model.optimizer._target_ == "torch.optim.SGD" and cfg.model.optimizer.lr == 3e-3
    check_arguments("model", cfg.model)
    from hydra.utils import instantiate

    model = instantiate(cfg.model, image_shape=[1, 8, 8], _convert_="all")
    assert model.configure_optimizers().defaults["momentum"] == 0.9
