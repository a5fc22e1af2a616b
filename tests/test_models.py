import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from aelab.errors import ConfigError
from aelab.models import VAE, Autoencoder


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
