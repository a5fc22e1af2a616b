from functools import partial

import pytest
import torch
import torch.nn.functional as F

from aelab.errors import ConfigError
from aelab.models import VAE, Autoencoder


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 16, 20)])
def test_autoencoder_shapes_follow_the_image(shape):
    model = Autoencoder(shape, latent_dim=3, hidden_dims=[32, 8])
    x = torch.rand(5, *shape)
    assert model.encode(x).shape == (5, 3)
    x_hat = model.reconstruct(x)
    assert x_hat.shape == x.shape and x_hat.min() >= 0 and x_hat.max() <= 1
    assert torch.allclose(model.loss_terms(x, x)["loss"], F.mse_loss(x_hat, x))


def test_deep_ae_layer_sizes():
    model = Autoencoder((1, 28, 28), latent_dim=3, hidden_dims=[128, 64, 12])
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
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
    model = VAE((1, 28, 28), latent_dim=20, hidden_dims=[400])
    x = torch.rand(4, 1, 28, 28).round()
    torch.manual_seed(0)
    terms = model.loss_terms(x, x)

    torch.manual_seed(0)
    mu, logvar = model.encoder(x)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    p = model.decode(z)
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).sum() / 4
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / 4
    assert torch.allclose(terms["recon"], bce, rtol=1e-4)
    assert torch.allclose(terms["kl"], kl, rtol=1e-5)
    assert torch.allclose(terms["loss"], bce + kl, rtol=1e-4)
    assert model.sample(6).shape == (6, 1, 28, 28)


def test_unknown_activation_names_the_key():
    with pytest.raises(ConfigError, match=r"model.activation='swishy' is not an activation"):
        Autoencoder((1, 28, 28), latent_dim=3, activation="swishy")


def test_optimizer_comes_from_the_partial():
    model = VAE((1, 28, 28), optimizer=partial(torch.optim.SGD, lr=0.5))
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.5
