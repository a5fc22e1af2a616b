"""The Ladder VAE: its precision-weighted merge and log-weights on cases small enough to check by
hand or with torch.distributions, its per-layer KL, and a run from the train config."""

import math

import pytest
import torch
from conftest import TWO_BATCHES, read_events, small_run_overrides
from torch.distributions import Bernoulli, Independent, Normal

from aelab.errors import ConfigError
from aelab.evaluation.likelihood import importance_weighted_nll
from aelab.models import VAE, LadderVAE
from aelab.models.ladder_vae import precision_weighted

MLP8 = {"_target_": "aelab.nets.MLP", "hidden_dims": [8]}
SHAPE = (1, 4, 4)
PIXELS = 16


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def tiny_ladder(**kwargs) -> LadderVAE:
    """Three stochastic layers z1 (3) <- z2 (2) <- z3 (2), one-layer blocks of 4 and 3 units."""
    sizes = {"latent_dim": 3, "upper_latent_dims": [2, 2], "upper_hidden_dims": [4, 3]}
    return LadderVAE(SHAPE, net=MLP8, **sizes | {"upper_block_layers": 1} | kwargs)


def randomized(model: LadderVAE) -> LadderVAE:
    """Random weights and BatchNorm running statistics, in evaluation mode (as nll_iw runs)."""
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.5)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_the_merge_weighs_each_gaussian_by_its_precision():
    """mu^ = 1, sigma^^2 = 1 with mu_p = 3, sigma_p^2 = 3: precision 1 + 1/3, so sigma_q^2 = 3/4
    and mu_q = (1/1 + 3/3) * 3/4 = 3/2. mu^ = -2, sigma^^2 = 1/4 with mu_p = 2, sigma_p^2 = 1:
    precision 4 + 1, so sigma_q^2 = 1/5 and mu_q = (-8 + 2) / 5 = -6/5."""
    mu_hat, var_hat = torch.tensor([1.0, -2.0]), torch.tensor([1.0, 0.25])
    mu_p, var_p = torch.tensor([3.0, 2.0]), torch.tensor([3.0, 1.0])
    mu_q, logvar_q = precision_weighted(mu_hat, var_hat.log(), mu_p, var_p.log())
    assert torch.allclose(mu_q, torch.tensor([1.5, -1.2]))
    assert torch.allclose(logvar_q.exp(), torch.tensor([0.75, 0.2]))
    # one estimate far surer than the other: the merge is that estimate, finite
    sure, unsure = torch.tensor([-80.0]), torch.tensor([80.0])
    mu_q, logvar_q = precision_weighted(torch.tensor([1.0]), sure, torch.tensor([5.0]), unsure)
    assert mu_q.item() == 1.0 and logvar_q.item() == pytest.approx(-80.0)


def test_log_weights_match_torch_distributions_with_random_weights():
    """Each density of log w written with torch.distributions from the same draws, the merge
    written as precisions: q(z3|x) from the bottom-up heads alone, q(z2|z3, x) and q(z1|z2, x)
    merged with p(z2|z3) and p(z1|z2) at the drawn z, p(z3) = N(0, I), Bernoulli p(x|z1)."""
    torch.manual_seed(3)
    model = randomized(tiny_ladder())
    x = binary_images(3)
    torch.manual_seed(4)
    log_w = model.log_importance_weights(x, 5)

    def normal(mu, logvar):
        return Independent(Normal(mu, (0.5 * logvar).exp()), 1)

    def heads(module, d):
        return module.mu(d), module.logvar(d)

    def block(module, h):  # a block on codes (5, 3, D), BatchNorm seeing them flat
        mu, logvar = heads(module, module.hidden(h.reshape(15, -1)))
        return mu.reshape(5, 3, -1), logvar.reshape(5, 3, -1)

    d1 = model.net.encoder(x)
    d2 = model.up[0].hidden(d1)
    hats = [heads(model, d1), heads(model.up[0], d2), heads(model.up[1], model.up[1].hidden(d2))]
    torch.manual_seed(4)  # the model's draws, top-down: z3, z2, z1
    mu3, logvar3 = hats[2]
    z = {3: mu3 + (0.5 * logvar3).exp() * torch.randn(5, 3, 2)}
    expected = Independent(Normal(torch.zeros(2), torch.ones(2)), 1).log_prob(z[3])
    expected = expected - normal(mu3, logvar3).log_prob(z[3])
    for i, size in ((2, 2), (1, 3)):
        mu_p, logvar_p = block(model.down[i - 1], z[i + 1])
        mu_hat, logvar_hat = hats[i - 1]
        var_q = 1 / (1 / logvar_hat.exp() + 1 / logvar_p.exp())
        mu_q = (mu_hat / logvar_hat.exp() + mu_p / logvar_p.exp()) * var_q
        z[i] = mu_q + var_q.sqrt() * torch.randn(5, 3, size)
        expected = expected + normal(mu_p, logvar_p).log_prob(z[i])
        expected = expected - normal(mu_q, var_q.log()).log_prob(z[i])
    logits = model.net.decoder(z[1].reshape(15, 3)).reshape(5, 3, *SHAPE)
    expected = expected + Independent(Bernoulli(logits=logits), 3).log_prob(x.expand(5, *x.shape))
    assert log_w.shape == (5, 3)
    assert torch.allclose(log_w, expected, atol=1e-4)


def test_every_layer_has_its_analytic_kl_and_the_warm_up_weighs_their_sum():
    """kl_i = KL(q(z_i|.) || p(z_i|z_{i+1})) written out for diagonal Gaussians, at the z of the
    same draws; recon the BCE of decoding z1; loss = recon + w(t) kl."""
    torch.manual_seed(0)
    model = tiny_ladder(kl_warmup_epochs=10)
    model.epoch_progress = 2.5  # w = 1/4 in training
    x = binary_images(6)
    torch.manual_seed(1)
    terms = model.loss_terms(x, x)
    torch.manual_seed(1)
    layers = model.top_down(model.bottom_up(x))
    assert set(terms) == {"loss", "recon", "kl", "kl_1", "kl_2", "kl_3"}
    for i, layer in enumerate(layers, start=1):
        (mu_q, logvar_q), (mu_p, logvar_p) = layer.q, layer.p
        ratio = (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp()
        kl = 0.5 * (logvar_p - logvar_q + ratio - 1).sum() / 6
        assert torch.allclose(terms[f"kl_{i}"], kl, atol=1e-5), i
    logits = model.net.decoder(layers[0].z)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / 6
    assert torch.allclose(terms["recon"], bce, atol=1e-5)
    assert torch.allclose(terms["kl"], terms["kl_1"] + terms["kl_2"] + terms["kl_3"])
    assert torch.allclose(terms["loss"], terms["recon"] + 0.25 * terms["kl"])
    model.eval()
    terms = model.loss_terms(x, x)
    assert torch.allclose(terms["loss"], terms["recon"] + terms["kl"])  # w = 1 in evaluation


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_with_no_upper_layer_it_is_the_vae(likelihood):
    """One stochastic layer: q(z1|x) is the bottom-up estimate and p(z1) = N(0, I), so every term
    is the VAE's (analytic KL; bits per dimension with the discretized logistic) for the same
    draw."""
    torch.manual_seed(0)
    one_layer = {"latent_dim": 3, "upper_latent_dims": [], "upper_hidden_dims": []}
    model = LadderVAE(SHAPE, net=MLP8, likelihood=likelihood, **one_layer)
    x = binary_images(4)
    torch.manual_seed(1)
    terms = model.loss_terms(x, x)
    torch.manual_seed(1)
    vae_terms = VAE.loss_terms(model, x, x)
    assert set(terms) == {"kl_1", *vae_terms}
    assert ("bpd" in terms) == (likelihood == "logistic")
    for name, value in vae_terms.items():
        assert torch.allclose(terms[name], value, atol=1e-5), name


def test_an_unsure_bottom_up_estimate_leaves_the_prior_and_log_w_is_16_log_2():
    """Every weight 0, but log sigma^^2 = 50 below the top: the merge gives q(z_i|.) = p(z_i|z_{i+1})
    = N(0, I) (BatchNorm's running statistics turn 0 into 0), q(z3|x) = p(z3) = N(0, I) and
    p(x|z1) = Bernoulli(1/2) per pixel, so log w = -16 log 2 and nll_iw = 16 log 2. (With a
    sure estimate, log sigma^^2 = 0 too, q(z_i|.) would be N(0, I/2).)"""
    model = tiny_ladder()
    for parameter in model.parameters():
        parameter.data.zero_()
    model.logvar.bias.data.fill_(50.0)
    model.up[0].logvar.bias.data.fill_(50.0)
    x = binary_images(3)
    model.eval()
    assert torch.allclose(model.log_importance_weights(x, 7), torch.full((7, 3), -16 * math.log(2)))
    nll = importance_weighted_nll(model, (x * 255).to(torch.uint8), samples=10)
    assert nll == pytest.approx(PIXELS * math.log(2), rel=1e-5)


def test_a_few_steps_lower_the_loss_and_nll_iw_uses_the_running_statistics():
    torch.manual_seed(0)
    model = tiny_ladder(upper_block_layers=2)
    x = binary_images(4).repeat(8, 1, 1, 1)  # four images to learn, a batch of 32
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss = model.loss_terms(x, x)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < losses[0] - 2, (losses[0], losses[-10:])
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    images = (x[:4] * 255).to(torch.uint8)
    nll = importance_weighted_nll(model, images, samples=200)
    assert not model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in statistics.items())
    torch.manual_seed(2)
    elbo = -sum(model.loss_terms(x[:4], x[:4])["loss"].item() for _ in range(20)) / 20
    assert 0 < nll <= -elbo + 0.1  # the K = 200 bound is at least as tight as the ELBO


def test_samples_codes_and_reconstructions_follow_the_shapes():
    model = randomized(tiny_ladder())
    x = binary_images(5)
    assert model.encode(x).shape == (5, 3)
    assert model.reconstruct(x).shape == (5, *SHAPE)
    draws = model.sample(4, generator=torch.Generator().manual_seed(0))
    again = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (4, *SHAPE) and torch.equal(draws, again)
    assert ((draws >= 0) & (draws <= 1)).all()
    assert torch.equal(model.sample(model.encode(x)), model.reconstruct(x))


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"upper_latent_dims": [2, 2], "upper_hidden_dims": [4]}, r"must be as long as each other"),
        ({"upper_latent_dims": [0], "upper_hidden_dims": [4]}, r"every size must be >= 1$"),
        ({"upper_block_layers": 0}, r"^model.upper_block_layers=0 must be >= 1$"),
        ({"upper_activation": "swish"}, r"^model.upper_activation='swish' is not an activation"),
    ],
)
def test_a_bad_ladder_is_one_line_naming_the_key(keys, message):
    with pytest.raises(ConfigError, match=message) as refusal:
        tiny_ladder(**keys)
    assert str(refusal.value).startswith("model.") and "\n" not in str(refusal.value)


def test_the_yaml_trains_and_logs_every_layer_s_kl(compose_cfg, data_dir, tmp_path):
    from aelab.training import fit_and_test
    from aelab.validation import check_arguments

    cfg = compose_cfg(
        "model=ladder_vae",
        "data=mnist",
        *small_run_overrides(data_dir),
        *TWO_BATCHES,
        output_dir=tmp_path,
    )
    assert cfg.model.kl_warmup_epochs == 10 and cfg.model.upper_latent_dims == [32, 16]
    check_arguments("model", cfg.model)
    metrics = fit_and_test(cfg)
    layers = {"kl_1", "kl_2", "kl_3", "kl", "recon", "loss"}
    assert {f"test/{name}" for name in layers} <= set(metrics), sorted(metrics)
    assert all(math.isfinite(value) for value in metrics.values())
    events = read_events(tmp_path / "tensorboard")
    assert {f"{stage}/{name}" for stage in ("train", "val") for name in layers} <= set(
        events.Tags()["scalars"]
    )
    assert {"val/reconstructions", "val/samples"} <= set(events.Tags()["images"])
