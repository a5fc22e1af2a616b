"""The five families papers compare: each one's objective on a tiny case computed by hand, and
each trained from the train config (`model=NAME data=mnist`) for a couple of steps."""

import math

import pytest
import torch
from conftest import TWO_BATCHES, read_events, small_run_overrides

from aelab.errors import ConfigError
from aelab.evaluation.likelihood import ImportanceWeighted, importance_weighted_nll
from aelab.models import IWAE, VAE, VQVAE, WAE, TwoLayerVAE, VampPriorVAE
from aelab.models.iwae import iw_bound
from aelab.models.vampprior import diagonal_gaussians_log_density
from aelab.models.vqvae import VectorQuantizer, perplexity
from aelab.models.wae import mmd

MLP8 = {"_target_": "aelab.nets.MLP", "hidden_dims": [8]}
SHAPE = (1, 4, 4)
PIXELS = 16


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def normal_log_density(z, mu, logvar):
    return torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)


# IWAE


def test_the_iw_bound_is_the_log_of_the_mean_weight():
    log_w = torch.tensor([[0.0, -1000.0], [math.log(3.0), -1000.0]])  # w = 1 and 3; e^-1000 twice
    assert torch.allclose(iw_bound(log_w), torch.tensor([math.log(2.0), -1000.0]))


def test_iwae_with_k_1_is_the_elbo_for_the_same_noise():
    iwae = IWAE(SHAPE, latent_dim=2, k=1, net=MLP8)
    x = binary_images(5)
    torch.manual_seed(0)
    terms = iwae.loss_terms(x, x)
    torch.manual_seed(0)  # the same eps, drawn by hand: z = mu + sigma * eps
    mu, logvar = iwae.posterior(x)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(1, *mu.shape)[0]
    recon = VAE.neg_log_likelihood(iwae, iwae.net.decoder(z), x) / 5
    kl = (normal_log_density(z, mu, logvar) - normal_log_density(z, 0 * mu, 0 * mu)).mean()
    assert torch.allclose(terms["loss"], recon + kl, rtol=1e-5)
    assert torch.allclose(terms["iw_bound"], terms["elbo"])
    iwae.k = 50
    terms = iwae.loss_terms(x, x)
    assert terms["iw_bound"] > terms["elbo"]  # Jensen: L_k >= the mean of its log w
    with pytest.raises(ConfigError, match=r"^model.k=0 must be an integer >= 1"):
        IWAE(SHAPE, k=0, net=MLP8)


# VampPrior


def test_vampprior_with_one_pseudo_input_equal_to_x_has_no_kl():
    """p(z) = q(z|u_1) = q(z|x): log q(z|x) - log p(z) is 0 at every z."""
    model = VampPriorVAE(SHAPE, latent_dim=3, num_pseudo_inputs=1, net=MLP8)
    x = binary_images(1)
    model.pseudo_inputs.data.copy_(x)
    assert model.loss_terms(x, x)["kl"].abs() < 1e-5


def test_the_expanded_gaussian_densities_match_torch_distributions_at_small_variances():
    """The two-matrix-product form of log q(z|u_k), where its terms cancel most: codes near
    their component's mean and variances down to e^-9."""
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(7, 5, generator=g) * 2, -9 * torch.rand(7, 5, generator=g)
    z = mu[torch.tensor([0, 3, 3, 6])] + 0.01 * torch.randn(4, 5, generator=g)
    normal = torch.distributions.Normal(mu.double(), (0.5 * logvar.double()).exp())
    by_torch = normal.log_prob(z.double().unsqueeze(-2)).sum(-1)  # (4, 7)
    ours = diagonal_gaussians_log_density(z, mu, logvar)
    assert ours.shape == (4, 7) and ours.dtype == torch.float32
    assert torch.allclose(ours.double(), by_torch, rtol=1e-6, atol=1e-3)
    assert torch.allclose(torch.logsumexp(ours, -1).double(), torch.logsumexp(by_torch, -1))


def test_vampprior_prior_is_the_mixture_of_the_pseudo_posteriors():
    model = VampPriorVAE(SHAPE, latent_dim=2, num_pseudo_inputs=2, net=MLP8)
    model.pseudo_inputs.data.copy_(binary_images(2, seed=1))
    (mu_1, mu_2), (logvar_1, logvar_2) = model.posterior(binary_images(2, seed=1))
    z = torch.tensor([[0.3, -0.2], [1.0, 2.0]])
    by_hand = torch.log(
        0.5 * normal_log_density(z, mu_1, logvar_1).exp()
        + 0.5 * normal_log_density(z, mu_2, logvar_2).exp()
    )
    assert torch.allclose(model.log_prior(z), by_hand, atol=1e-5)
    draws = model.sample(4, generator=torch.Generator().manual_seed(0))
    again = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (4, *SHAPE) and torch.equal(draws, again)
    assert isinstance(model, ImportanceWeighted)
    with pytest.raises(ConfigError, match=r"^model.num_pseudo_inputs=0 must be >= 1$"):
        VampPriorVAE(SHAPE, num_pseudo_inputs=0, net=MLP8)


# two stochastic layers


def zeroed_two_layer_vae(**kwargs) -> TwoLayerVAE:
    """Every weight and bias 0: q(z1|x) = q(z2|z1) = p(z1|z2) = p(z2) = N(0, I) and
    p(x|z1) = Bernoulli(1/2) per pixel, so log w = log p(x|z1) = -16 log 2 for every draw."""
    model = TwoLayerVAE(
        SHAPE, latent_dim=3, top_latent_dim=2, top_hidden_dims=[4], net=MLP8, **kwargs
    )
    for parameter in model.parameters():
        parameter.data.zero_()
    return model


def test_two_layer_log_weights_cover_both_layers():
    model = zeroed_two_layer_vae()
    x = binary_images(3)
    assert torch.allclose(model.log_importance_weights(x, 7), torch.full((7, 3), -16 * math.log(2)))
    nll = importance_weighted_nll(model, (x * 255).to(torch.uint8), samples=10)
    assert nll == pytest.approx(PIXELS * math.log(2), rel=1e-5)


def test_two_layer_log_weights_match_torch_distributions_with_random_weights():
    """Each of the five densities of log w, written with torch.distributions from the same
    draws (the zero-weight test above cannot see a swapped mean and variance or a wrong layer)."""
    from torch.distributions import Bernoulli, Independent, Normal

    torch.manual_seed(3)
    model = TwoLayerVAE(SHAPE, latent_dim=3, top_latent_dim=2, top_hidden_dims=[4], net=MLP8)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.5)
    x = binary_images(3)
    torch.manual_seed(4)
    log_w = model.log_importance_weights(x, 5)

    def normal(mu, logvar):
        return Independent(Normal(mu, (0.5 * logvar).exp()), 1)

    torch.manual_seed(4)  # the same draws, in the model's order: eps1, then eps2
    mu1, logvar1 = model.posterior(x)
    z1 = mu1 + (0.5 * logvar1).exp() * torch.randn(5, *mu1.shape)
    mu2, logvar2 = model.up(z1)
    z2 = mu2 + (0.5 * logvar2).exp() * torch.randn_like(mu2)
    logits = model.net.decoder(z1.flatten(0, 1)).unflatten(0, (5, 3))
    expected = (
        Independent(Bernoulli(logits=logits), 3).log_prob(x.expand(5, *x.shape))
        + normal(*model.down(z2)).log_prob(z1)
        + Independent(Normal(torch.zeros(2), torch.ones(2)), 1).log_prob(z2)
        - normal(mu1, logvar1).log_prob(z1)
        - normal(mu2, logvar2).log_prob(z2)
    )
    assert log_w.shape == (5, 3)
    assert torch.allclose(log_w, expected, atol=1e-4)


def test_two_layer_objectives():
    x = binary_images(6)
    torch.manual_seed(0)
    elbo = TwoLayerVAE(SHAPE, latent_dim=3, top_latent_dim=2, net=MLP8, k=20)
    iw = TwoLayerVAE(SHAPE, latent_dim=3, top_latent_dim=2, net=MLP8, k=20, objective="iw")
    iw.load_state_dict(elbo.state_dict())
    torch.manual_seed(1)
    terms = elbo.loss_terms(x, x)
    torch.manual_seed(1)
    assert torch.allclose(iw.loss_terms(x, x)["loss"], -terms["iw_bound"])
    assert torch.allclose(terms["loss"], -terms["elbo"]) and terms["iw_bound"] > terms["elbo"]
    assert iw.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, *SHAPE)
    with pytest.raises(ConfigError, match=r"^model.objective='vae' is unknown"):
        TwoLayerVAE(SHAPE, objective="vae", net=MLP8)
    with pytest.raises(ConfigError, match=r"^model.top_activation='swish' is not an activation"):
        TwoLayerVAE(SHAPE, top_activation="swish", net=MLP8)


# WAE-MMD


def test_mmd_estimators_by_hand():
    """IMQ kernel with C = 2 on a = {0, 1}, b = {0, 2}: k = 1, 2/3, 1/3 at distances 0, 1, 2.
    Unbiased: (2/3 + 2/3)/2 + 1/3 - 2 (1 + 1/3 + 2/3 + 2/3)/4 = -1/3 (it can be negative);
    biased: (1 + 2/3 + 2/3 + 1)/4 + (1 + 1/3 + 1/3 + 1)/4 - 4/3 = 1/6."""
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [2.0]])
    assert mmd(a, b, scale=2.0).item() == pytest.approx(-1 / 3)
    assert mmd(a, b, scale=2.0, biased=True).item() == pytest.approx(1 / 6)
    same = torch.randn(7, 3)
    assert mmd(same, same.clone(), scale=6.0, biased=True).item() == 0.0


def test_wae_loss_is_squared_error_plus_weighted_mmd():
    model = WAE(SHAPE, latent_dim=2, mmd_weight=10.0, net=MLP8)
    x = binary_images(4)
    torch.manual_seed(0)
    terms = model.loss_terms(x, x)
    z = model.encode(x)
    torch.manual_seed(0)
    prior = torch.randn_like(z)
    assert torch.equal(z, model.encode(x))  # deterministic encoder
    assert torch.allclose(terms["mmd"], mmd(z, prior, scale=4.0))  # C = 2 d
    assert torch.allclose(terms["recon"], (model.decode(z) - x).pow(2).sum() / 4)
    assert torch.allclose(terms["loss"], terms["recon"] + 10 * terms["mmd"])
    assert not isinstance(model, ImportanceWeighted)
    with pytest.raises(ConfigError, match=r"^model.mmd_weight=nan must be a finite number"):
        WAE(SHAPE, mmd_weight=float("nan"), net=MLP8)


# VQ-VAE


def test_vq_terms_straight_through_and_usage_by_hand():
    model = VQVAE(SHAPE, latent_dim=4, code_dim=2, codebook_size=4, net=MLP8)
    model.quantizer.codebook.data = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0], [9.0, 9.0]])
    z_e = torch.tensor([[0.2, 0.1, 0.9, 0.7]], requires_grad=True)  # nearest: codes 0 and 1
    model.encode = lambda x: z_e
    x = binary_images(1)
    terms = model.loss_terms(x, x)
    # ||z_e - e||^2 = (0.04 + 0.01) + (0.01 + 0.09) = 0.15 for both terms
    assert terms["commitment"].item() == pytest.approx(0.15)
    assert terms["codebook"].item() == pytest.approx(0.15)
    assert terms["loss"].item() == pytest.approx(terms["recon"].item() + 0.15 + 0.25 * 0.15)
    assert terms["perplexity"].item() == pytest.approx(2.0)  # two codes, used once each
    assert terms["codes_used"].item() == 0.5
    assert torch.equal(model.quantize(z_e), torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    # straight through: the decoder's gradient reaches z_e unchanged, + the commitment's
    decoder_only = torch.autograd.grad(terms["recon"], z_e, retain_graph=True)[0]
    z_q = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    logits = model.net.decoder(z_q)
    expected = torch.autograd.grad(
        torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum"), z_q
    )[0]
    assert torch.allclose(decoder_only, expected)
    assert perplexity(torch.tensor([3.0, 3.0, 3.0, 0.0])).item() == pytest.approx(3.0)


def test_vq_ema_update_and_dead_code_restart_by_hand():
    fresh = VectorQuantizer(size=3, dim=1, ema=False, decay=0.5, dead_code_threshold=0.3)
    batch = torch.tensor([[7.0], [8.0]])
    fresh.update(batch, fresh.nearest(batch))  # codes start unused: the two not chosen restart
    assert sorted(fresh.codebook.flatten().tolist())[1:] in ([7.0, 8.0], [7.0, 7.0], [8.0, 8.0])
    quantizer = VectorQuantizer(size=2, dim=1, ema=True, decay=0.5, dead_code_threshold=0.3)
    quantizer.usage.fill_(1.0)
    quantizer.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    quantizer.ema_sum.copy_(quantizer.codebook)
    z = torch.tensor([[2.0], [4.0]])
    indices = quantizer.nearest(z)
    assert indices.tolist() == [0, 0]
    quantizer.update(z, indices)
    # N = 0.5 * 1 + 0.5 * [2, 0] = [1.5, 0.5];  m = 0.5 * [0, 10] + 0.5 * [6, 0] = [3, 5]
    assert torch.allclose(quantizer.ema_count, torch.tensor([1.5, 0.5]))
    assert torch.allclose(quantizer.codebook, torch.tensor([[2.0], [10.0]]), atol=1e-4)
    # code 1's use: 1 -> 0.5 -> 0.25 < 0.3: restarted at one of the batch's vectors
    quantizer.update(z, quantizer.nearest(z))
    assert quantizer.codebook[1].item() in (2.0, 4.0) and quantizer.usage[1] == 1.0
    with pytest.raises(ConfigError, match=r"model.latent_dim=5 a multiple of code_dim"):
        VQVAE(SHAPE, latent_dim=5, code_dim=2, net=MLP8)


def test_vqvae_has_no_prior_to_sample_from():
    model = VQVAE(SHAPE, latent_dim=4, code_dim=2, codebook_size=8, net=MLP8)
    assert not hasattr(model, "sample") and not isinstance(model, ImportanceWeighted)


def test_reconstruction_mse_is_the_same_measure_for_every_family():
    from aelab.evaluation.reconstruction import reconstruction_mse
    from aelab.models import Autoencoder

    images = (binary_images(6) * 255).to(torch.uint8)
    grey = Autoencoder(SHAPE, latent_dim=2, net=MLP8)
    for parameter in grey.parameters():
        parameter.data.zero_()  # sigmoid(0) = 1/2 everywhere: (1/2)^2 per binary pixel
    assert reconstruction_mse(grey, images) == 0.25
    vq = VQVAE(SHAPE, latent_dim=4, code_dim=2, codebook_size=8, net=MLP8).eval()
    x = images.float() / 255
    assert reconstruction_mse(vq, images) == pytest.approx(vq.loss_terms(x, x)["mse"].item())


# each family from the train config


@pytest.mark.parametrize(
    ("family", "terms", "samples"),
    [
        ("iwae", {"iw_bound", "elbo"}, True),
        ("vampprior", {"recon", "kl"}, True),
        ("two_layer_vae", {"iw_bound", "elbo"}, True),
        ("wae", {"recon", "mmd"}, True),
        ("vqvae", {"perplexity", "codes_used", "mse"}, False),
    ],
)
def test_family_trains_from_the_train_config(
    compose_cfg, data_dir, tmp_path, family, terms, samples
):
    from aelab.training import fit_and_test

    cfg = compose_cfg(
        f"model={family}",
        "data=mnist",
        *small_run_overrides(data_dir),
        *TWO_BATCHES,
        output_dir=tmp_path,
    )
    metrics = fit_and_test(cfg)
    assert {f"test/{name}" for name in {"loss", *terms}} <= set(metrics), sorted(metrics)
    assert all(math.isfinite(value) for value in metrics.values())
    events = read_events(tmp_path / "tensorboard")
    expected = {"val/reconstructions", "val/samples"} if samples else {"val/reconstructions"}
    assert {tag for tag in events.Tags()["images"] if tag.startswith("val/")} == expected
