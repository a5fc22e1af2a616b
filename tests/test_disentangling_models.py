"""beta-TCVAE, FactorVAE and the annealed-capacity beta-VAE: each loss on a case small enough to
compute by hand, FactorVAE's two optimizers under Lightning (global_step, checkpoints, the
refused trainer keys, the schedule), and each YAML through one tiny run."""

import math

import lightning as L
import pytest
import torch
from conftest import N_TRAIN, TWO_BATCHES, VAL_SIZE, read_events, run_train, small_run_overrides
from lightning.pytorch.loggers import CSVLogger
from torch.distributions import Normal
from torch.utils.data import DataLoader, TensorDataset

from aelab.errors import ConfigError
from aelab.models import BetaTCVAE, CapacityVAE, FactorVAE
from aelab.models.beta_tcvae import mws_log_densities
from aelab.models.factor_vae import discriminator_loss, permute_dims, total_correlation

MLP8 = {"_target_": "aelab.nets.MLP", "hidden_dims": [8]}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
SHAPE = (1, 4, 4)


def binary_images(n: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def normal_pdf(z: float, mean: float, var: float) -> float:
    return math.exp(-((z - mean) ** 2) / (2 * var)) / math.sqrt(2 * math.pi * var)


# --- beta-TCVAE ----------------------------------------------------------------------------------


def test_mws_estimates_log_q_z_as_the_authors_do():
    """Two draws of two dimensions, N = 10: log q(z_i) = log (1/(N M)) sum_k q(z_i|x_k),
    log prod_j q(z_ij) = sum_j log (1/(N M)) sum_k q(z_ij|x_k), densities summed by hand."""
    mu = [[0.0, 1.0], [2.0, -1.0]]
    var = [[1.0, 4.0], [0.25, 1.0]]
    z = [[0.5, 0.0], [1.5, -0.5]]
    n, m = 10, 2
    log_q_zx, log_qz, log_prod = mws_log_densities(
        torch.tensor(z), torch.tensor(mu), torch.tensor(var).log(), dataset_size=n
    )
    for i in range(m):
        pdf = [[normal_pdf(z[i][d], mu[k][d], var[k][d]) for d in range(2)] for k in range(m)]
        expected_qz = math.log(sum(pdf[k][0] * pdf[k][1] for k in range(m)) / (n * m))
        expected_prod = sum(math.log(sum(pdf[k][d] for k in range(m)) / (n * m)) for d in range(2))
        assert log_q_zx[i].item() == pytest.approx(math.log(pdf[i][0] * pdf[i][1]), rel=1e-5)
        assert log_qz[i].item() == pytest.approx(expected_qz, rel=1e-5)
        assert log_prod[i].item() == pytest.approx(expected_prod, rel=1e-5)


def tiny_tcvae(**kwargs) -> BetaTCVAE:
    torch.manual_seed(0)
    model = BetaTCVAE(SHAPE, latent_dim=3, net=MLP8, **{"dataset_size": 100} | kwargs)
    for parameter in model.parameters():
        parameter.data.normal_(0, 0.5)
    return model


def test_mi_tc_and_dwkl_sum_to_the_sampled_kl_and_weigh_the_loss():
    """mi + tc + dwkl = mean(log q(z|x) - log p(z)) of the same draws, written with
    torch.distributions; loss = recon + alpha mi + beta tc + gamma dwkl; kl is the closed form."""
    model = tiny_tcvae(alpha=2.0, beta=3.0, gamma=0.5)
    x = binary_images(5)
    torch.manual_seed(1)
    terms = model.loss_terms(x, x)
    assert set(terms) == {"loss", "recon", "mi", "tc", "dwkl", "kl"}
    mu, logvar = model.posterior(x)
    torch.manual_seed(1)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(mu)
    log_q = Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(1)
    assert (terms["mi"] + terms["tc"] + terms["dwkl"]).item() == pytest.approx(
        (log_q - log_p).mean().item(), abs=1e-4
    )
    bce = torch.nn.functional.binary_cross_entropy_with_logits(
        model.net.decoder(z), x, reduction="sum"
    )
    assert terms["recon"].item() == pytest.approx(bce.item() / 5, rel=1e-5)
    weighted = terms["recon"] + 2 * terms["mi"] + 3 * terms["tc"] + 0.5 * terms["dwkl"]
    assert torch.allclose(terms["loss"], weighted)
    closed_form = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / 5
    assert torch.allclose(terms["kl"], closed_form, atol=1e-5)
    # against minibatch averages log (1/M) sum_k: constants of log N = log 100, D = 3
    per_dim = Normal(mu[None], (0.5 * logvar[None]).exp()).log_prob(z[:, None])  # (i, k, d)
    log_qz = torch.logsumexp(per_dim.sum(2), 1) - math.log(5)
    log_prod = (torch.logsumexp(per_dim, 1) - math.log(5)).sum(1)
    for name, average, offset in [
        ("mi", log_q - log_qz, 1),
        ("tc", log_qz - log_prod, 2),
        ("dwkl", log_prod - log_p, -3),
    ]:
        expected = average.mean().item() + offset * math.log(100)
        assert terms[name].item() == pytest.approx(expected, abs=1e-4), name


def test_the_dataset_size_is_kept_in_the_state_dict_and_needed():
    trained = tiny_tcvae(dataset_size=50)
    fresh = BetaTCVAE(SHAPE, latent_dim=3, net=MLP8)
    with pytest.raises(ConfigError, match=r"^model.dataset_size is null and no training split"):
        fresh.loss_terms(binary_images(2), binary_images(2))
    fresh.load_state_dict(trained.state_dict())
    assert fresh.n == 50 and fresh.dataset_size.item() == 50
    assert torch.isfinite(fresh.loss_terms(binary_images(2), binary_images(2))["loss"])


# --- FactorVAE -----------------------------------------------------------------------------------


def test_the_permutation_keeps_every_marginal_and_breaks_the_pairing():
    """z[i, d] = 3 i + d: each permuted column holds its own values, each in its own order."""
    z = torch.arange(24.0).reshape(8, 3)
    torch.manual_seed(0)
    permuted = permute_dims(z)
    for d in range(3):
        assert torch.equal(permuted[:, d].sort().values, z[:, d])
    rows = (permuted - torch.arange(3.0)) / 3  # the row each value came from
    orders = {tuple(rows[:, d].tolist()) for d in range(3)}
    assert len(orders) == 3 and tuple(range(8)) not in orders


def test_the_discriminator_loss_and_tc_on_fixed_logits():
    """Codes from q(z) with logits (2, 0) and (0, 1), class 0; permuted codes with (0, 3) and
    (1, 1), class 1: cross-entropies log(1 + e^-2), log(1 + e^1), log(1 + e^-3), log 2.
    TC = mean(l_0 - l_1) = (2 - 1) / 2."""
    q_logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    product_logits = torch.tensor([[0.0, 3.0], [1.0, 1.0]])
    q_part = (math.log(1 + math.exp(-2)) + math.log(1 + math.e)) / 2
    product_part = (math.log(1 + math.exp(-3)) + math.log(2)) / 2
    loss = discriminator_loss(q_logits, product_logits).item()
    assert loss == pytest.approx(0.5 * (q_part + product_part), rel=1e-6)
    assert total_correlation(q_logits).item() == pytest.approx(0.5)
    # log D / (1 - D) with D = softmax's class 0 is the difference of the logits
    d = torch.softmax(q_logits, dim=1)[:, 0]
    assert torch.log(d / (1 - d)).mean().item() == pytest.approx(0.5, rel=1e-6)


def tiny_factor_vae(**kwargs) -> FactorVAE:
    torch.manual_seed(0)
    sizes = {"latent_dim": 3, "discriminator_layers": 2, "discriminator_width": 8}
    return FactorVAE(SHAPE, net=MLP8, **sizes | {"optimizer": ADAM} | kwargs)


def test_the_factor_vae_loss_is_the_elbo_plus_gamma_tc_and_the_discriminator_s():
    model = tiny_factor_vae(gamma=7.0)
    x = binary_images(6)
    torch.manual_seed(1)
    terms = model.loss_terms(x, x)
    assert set(terms) == {"loss", "recon", "kl", "tc", "discriminator_loss"}
    torch.manual_seed(1)
    z = model.codes(x)[0]
    assert torch.allclose(terms["tc"], total_correlation(model.discriminator(z)))
    assert torch.allclose(terms["loss"], terms["recon"] + terms["kl"] + 7 * terms["tc"])
    assert 0 < terms["discriminator_loss"] < 2


def test_the_vae_optimizer_leaves_out_the_discriminator():
    model = tiny_factor_vae()
    vae, disc = model.configure_optimizers()
    vae_params = {id(p) for group in vae.param_groups for p in group["params"]}
    disc_params = {id(p) for group in disc.param_groups for p in group["params"]}
    assert disc_params == {id(p) for p in model.discriminator.parameters()}
    assert not vae_params & disc_params
    assert vae_params | disc_params == {id(p) for p in model.parameters()}
    assert disc.defaults["lr"] == 1e-4 and tuple(disc.defaults["betas"]) == (0.5, 0.9)
    assert vae.defaults["lr"] == 1e-3


def loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    x = binary_images(n)
    return DataLoader(TensorDataset(x, torch.zeros(n)), batch_size=batch_size)


def fit(model: FactorVAE, ckpt_path=None, **trainer_args) -> L.Trainer:
    """Four batches of eight images an epoch, on the CPU, with nothing written but asked for."""
    arguments = {"max_epochs": 1, "logger": False, "enable_checkpointing": False}
    trainer = L.Trainer(
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **arguments | trainer_args,
    )
    trainer.fit(model, loader(), loader(8), ckpt_path=ckpt_path)
    return trainer


def adam_steps(state: dict) -> set[int]:
    return {int(s["step"]) for s in state["state"].values()}


def test_both_optimizers_step_once_a_batch_into_the_checkpoint_and_back(tmp_path):
    """Two optimizer steps a batch: global_step is twice the batches, and a resumed run goes on
    from both optimizers' saved states."""
    model = tiny_factor_vae()
    trainer = fit(model)
    assert trainer.global_step == 8  # 4 batches
    trainer.save_checkpoint(tmp_path / "one.ckpt")
    checkpoint = torch.load(tmp_path / "one.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 8
    vae_state, disc_state = checkpoint["optimizer_states"]
    assert adam_steps(vae_state) == adam_steps(disc_state) == {4}
    assert len(disc_state["state"]) == len(list(model.discriminator.parameters()))
    resumed = tiny_factor_vae()
    trainer = fit(resumed, ckpt_path=tmp_path / "one.ckpt", max_epochs=2)
    assert trainer.global_step == 16
    assert [adam_steps(o.state_dict()) for o in trainer.optimizers] == [{8}, {8}]


def test_max_steps_counts_both_optimizers_and_logging_counts_batches(tmp_path):
    """trainer.max_steps=4 is two batches; with log_every_n_steps=2 over four batches the
    training terms are written twice (the base module's global_step rule would never write them:
    global_step + 1 is odd before every batch)."""
    trainer = fit(tiny_factor_vae(), max_steps=4)
    assert [adam_steps(o.state_dict()) for o in trainer.optimizers] == [{2}, {2}]
    logger = CSVLogger(tmp_path, name="", version="")
    fit(tiny_factor_vae(), logger=logger, log_every_n_steps=2)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("train/discriminator_loss")
    written = [line.split(",") for line in lines[1:]]
    assert sum(1 for row in written if row[column]) == 2
    assert {"train/tc", "train/loss", "train/recon", "train/kl"} <= set(header)


def test_each_optimizer_moves_only_its_own_weights():
    """A rate of 0 for one optimizer: its weights stay as they were after a batch; the other's
    move."""
    frozen = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.0}
    model = tiny_factor_vae(discriminator_optimizer=frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, max_steps=2)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and not any(k.startswith("discriminator.") for k in moved)
    model = tiny_factor_vae(optimizer=frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, max_steps=2)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith("discriminator.") for k in moved)


def test_the_vae_s_schedule_steps_once_an_epoch_and_the_discriminator_s_rate_stays():
    halving = {"_target_": "torch.optim.lr_scheduler.StepLR", "_partial_": True, "step_size": 1}
    trainer = fit(tiny_factor_vae(scheduler=halving | {"gamma": 0.5}), max_epochs=2)
    assert [o.param_groups[0]["lr"] for o in trainer.optimizers] == [2.5e-4, 1e-4]


@pytest.mark.parametrize(
    ("trainer_args", "line"),
    [
        ({"gradient_clip_val": 0.5}, "trainer.gradient_clip_val=0.5 is not supported"),
        ({"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches=2 is not supported"),
    ],
)
def test_what_manual_optimization_cannot_do_is_one_line_naming_the_trainer_key(trainer_args, line):
    with pytest.raises(ConfigError) as refusal:
        fit(tiny_factor_vae(), **trainer_args)
    message = str(refusal.value)
    assert message.startswith(line) and "model=factor_vae" in message and "\n" not in message


@pytest.mark.slow
def test_factor_vae_trains_under_ddp(data_dir, tmp_path):
    """DDP allows one backward pass per training step: the VAE's and D's losses share one."""
    result = run_train(
        "trainer=ddp_cpu",
        "model=factor_vae",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=3",
        "++trainer.limit_val_batches=1",
        "++trainer.limit_test_batches=1",
        *small_run_overrides(data_dir),
        f"hydra.run.dir={tmp_path}",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 6 and len(checkpoint["optimizer_states"]) == 2


# --- annealed capacity ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("progress", "capacity"), [(0.0, 0.0), (2.5, 6.25), (10.0, 25.0), (20.0, 25.0)]
)
def test_the_capacity_rises_linearly_and_the_loss_is_gamma_times_the_kl_s_distance(
    progress, capacity
):
    """C_max = 25 over 10 epochs: C = 2.5 t; loss = recon + gamma |KL - C|; evaluation: C_max."""
    torch.manual_seed(0)
    model = CapacityVAE(SHAPE, latent_dim=3, net=MLP8, gamma=100.0, capacity_epochs=10.0)
    model.epoch_progress = progress
    x = binary_images(4)
    terms = model.loss_terms(x, x)
    assert set(terms) == {"loss", "recon", "kl", "capacity"}
    assert terms["capacity"].item() == capacity
    expected = terms["recon"].item() + 100 * abs(terms["kl"].item() - capacity)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-6)
    model.eval()
    assert model.loss_terms(x, x)["capacity"].item() == 25.0


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "keys", "line"),
    [
        (BetaTCVAE, {"alpha": -1.0}, "model.alpha=-1.0 must be >= 0"),
        (BetaTCVAE, {"dataset_size": 0}, "model.dataset_size=0 must be >= 1"),
        (FactorVAE, {"gamma": -2.0}, "model.gamma=-2.0 must be >= 0"),
        (FactorVAE, {"discriminator_width": 0}, "model.discriminator_layers=6 must be >= 0 and"),
        (CapacityVAE, {"capacity_max": -5.0}, "model.capacity_max=-5.0 must be >= 0"),
    ],
)
def test_a_bad_key_is_one_line_naming_it(model, keys, line):
    with pytest.raises(ConfigError) as refusal:
        model(SHAPE, net=MLP8, **keys)
    assert str(refusal.value).startswith(line) and "\n" not in str(refusal.value)


TERMS = {
    "beta_tcvae": {"loss", "recon", "kl", "mi", "tc", "dwkl"},
    "factor_vae": {"loss", "recon", "kl", "tc", "discriminator_loss"},
    "capacity_vae": {"loss", "recon", "kl", "capacity"},
}


@pytest.mark.parametrize("name", sorted(TERMS))
def test_the_yaml_trains_and_logs_its_terms(compose_cfg, data_dir, tmp_path, name):
    from aelab.training import fit_and_test
    from aelab.validation import check_arguments

    cfg = compose_cfg(
        f"model={name}",
        "data=mnist",
        *small_run_overrides(data_dir),
        *TWO_BATCHES,
        output_dir=tmp_path,
    )
    assert cfg.model.latent_dim == 10
    check_arguments("model", cfg.model)
    metrics = fit_and_test(cfg)
    assert {f"test/{term}" for term in TERMS[name]} <= set(metrics), sorted(metrics)
    assert all(math.isfinite(value) for value in metrics.values())
    events = read_events(tmp_path / "tensorboard")
    logged = {f"{stage}/{term}" for stage in ("train", "val") for term in TERMS[name]}
    assert logged <= set(events.Tags()["scalars"])
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    if name == "beta_tcvae":  # N: the training split's size, counted and kept
        assert checkpoint["state_dict"]["dataset_size"] == N_TRAIN - VAL_SIZE
    if name == "factor_vae":
        assert checkpoint["global_step"] == 4 and len(checkpoint["optimizer_states"]) == 2
