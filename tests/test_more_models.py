"""Convolutional models, beta-VAE, likelihoods, denoising and folders of your own IDX files."""

import itertools
import math
from functools import partial

import pytest
import torch
from conftest import read_events, small_run_overrides, write_dataset

from aelab.errors import ConfigError
from aelab.models import VAE, Autoencoder
from aelab.training import train

CONV = {"_target_": "aelab.nets.ConvNet", "channels": [8, 16]}
MLP8 = {"_target_": "aelab.nets.MLP", "hidden_dims": [8]}


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 17, 30), (1, 8, 8)])
def test_conv_models_fit_any_image_size(shape):
    x = torch.rand(3, *shape)
    ae = Autoencoder(shape, latent_dim=5, net=CONV)
    assert ae.encode(x).shape == (3, 5) and ae.reconstruct(x).shape == x.shape
    vae = VAE(shape, latent_dim=4, net=CONV)
    assert vae.sample(2).shape == (2, *shape)
    assert any(isinstance(m, torch.nn.Conv2d) for m in vae.modules())


def test_too_many_convolutions_for_the_image_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"model.net.channels=\[8, 8, 8, 8\]: 4 stride-2 convolutions"
    ):
        Autoencoder((1, 8, 8), latent_dim=2, net={**CONV, "channels": [8, 8, 8, 8]})


def test_gaussian_likelihood_is_a_negative_log_density_in_nats():
    model = VAE((1, 4, 4), latent_dim=2, net=MLP8, likelihood="gaussian", gaussian_std=0.5)
    x = torch.rand(3, 1, 4, 4)
    logits = torch.randn(3, 1, 4, 4)
    mean = torch.sigmoid(logits)
    expected = -torch.distributions.Normal(mean, 0.5).log_prob(x).sum()
    assert torch.allclose(model.neg_log_likelihood(logits, x), expected, rtol=1e-5)
    assert "log_std" not in dict(model.named_parameters())
    learned = VAE((1, 4, 4), latent_dim=2, net=MLP8, likelihood="gaussian")
    assert "log_std" in dict(learned.named_parameters())
    with pytest.raises(ConfigError, match=r"model\.likelihood='poisson' is unknown"):
        VAE((1, 4, 4), likelihood="poisson")


def test_beta_weights_kl_and_warms_up():
    model = VAE((1, 4, 4), latent_dim=2, net=MLP8, beta=4.0, kl_warmup_epochs=2)
    model.eval()
    x = torch.rand(5, 1, 4, 4)
    torch.manual_seed(0)
    terms = model.loss_terms(x, x)
    assert torch.allclose(terms["loss"], terms["recon"] + 4.0 * terms["kl"])


@pytest.mark.parametrize("noise", ["gaussian", "masking"])
def test_noise_corrupts_training_inputs_only(noise):
    model = Autoencoder((1, 6, 6), latent_dim=2, noise=noise, noise_level=0.5)
    x = torch.full((4, 1, 6, 6), 0.5)
    noisy = model.corrupt(x)
    assert noisy.shape == x.shape and not torch.equal(noisy, x)
    assert noisy.min() >= 0 and noisy.max() <= 1
    with pytest.raises(ConfigError, match=r"model\.noise='salt' is unknown"):
        Autoencoder((1, 6, 6), latent_dim=2, noise="salt")
    with pytest.raises(ConfigError, match=r"model\.noise_level=0\.0 must be"):
        Autoencoder((1, 6, 6), latent_dim=2, noise=noise, noise_level=0.0)


def _events(run_dir):
    return read_events(run_dir / "tensorboard")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "extra", "images"),
    [
        ("conv_ae", [], {"val/reconstructions"}),
        ("conv_vae", [], {"val/reconstructions", "val/samples"}),
        ("beta_vae", [], {"val/reconstructions", "val/samples"}),
        ("vae", ["model.likelihood=gaussian"], {"val/reconstructions", "val/samples"}),
        ("deep_ae", ["model.noise=masking", "model.noise_level=0.3"], {"val/reconstructions"}),
    ],
)
def test_new_models_train_and_log(compose_cfg, data_dir, tmp_path, model, extra, images):
    """In-process, as `python train.py` trains after composing (its command line: test_train)."""
    overrides = [f"model={model}", *extra, "trainer.max_epochs=3", "model.optimizer.lr=3e-3"]
    train(compose_cfg(*overrides, *small_run_overrides(data_dir), output_dir=tmp_path))
    events = _events(tmp_path)
    assert {tag for tag in events.Tags()["images"] if tag.startswith("val/")} == images
    val_loss = [e.value for e in events.Scalars("val/loss")]
    assert val_loss[-1] < val_loss[0], val_loss
    assert math.isfinite(events.Scalars("test/loss")[0].value)
    rows = 3 if "model.noise=masking" in extra else 2  # noisy input, reconstruction, clean
    grid = events.Images("val/reconstructions")[-1]
    assert grid.height == rows * 30 + 2


@pytest.mark.slow
def test_idx_folder_of_another_size(compose_cfg, tmp_path):
    folder = tmp_path / "mine"
    write_dataset(folder, n_train=400, n_test=60, shape=(20, 32), gz=True)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).rename(folder / name.replace("t10k", "test"))
    run_dir = tmp_path / "run"
    cfg = compose_cfg(
        "data=idx",
        f"data.source.path={folder}",
        "model=conv_vae",
        "trainer.max_epochs=2",
        "data.batch_size=32",
        "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1",
        output_dir=run_dir,
    )
    train(cfg)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["image_shape"] == [1, 20, 32]
    events = _events(run_dir)
    assert len(events.Scalars("val/loss")) == 2
    model = VAE.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert model.sample(2).shape == (2, 1, 20, 32)


def test_idx_needs_a_path(compose_cfg, tmp_path):
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    cfg = compose_cfg("data=idx", "data.source.path=null", output_dir=tmp_path)
    with pytest.raises(InstantiationException) as err:
        instantiate(cfg.data, _convert_="all")
    assert isinstance(err.value.__cause__, ConfigError)
    assert "data=idx needs data.source.path=DIR" in str(err.value.__cause__)


def test_models_use_partial_optimizer():
    model = VAE(
        (1, 8, 8), net={**CONV, "channels": [4]}, optimizer=partial(torch.optim.SGD, lr=0.1)
    )
    assert isinstance(model.configure_optimizers(), torch.optim.SGD)


def test_the_iwae_schedule_is_burda_et_al_s():
    """lr = 1e-3 * 10^(-i/7) for 3^i epochs, i = 0..7: epochs 0 | 1-3 | 4-12 | 13-39 | ..."""
    from aelab.schedulers import StagedDecay

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = StagedDecay(optimizer, growth=3, stages_per_decade=7)
    stage_ends = list(itertools.accumulate(3**i for i in range(8)))  # 1, 4, 13, ..., 3280
    assert stage_ends[-1] == 3280
    for epoch in range(3280):
        stage = next(i for i, end in enumerate(stage_ends) if epoch < end)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 10 ** (-stage / 7)), epoch
        optimizer.step()
        scheduler.step()
    # after the paper's 3,280 epochs the schedule goes on with stage 8
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 10 ** (-8 / 7))
    with pytest.raises(ConfigError, match=r"^model.scheduler.growth=0 must be an integer >= 1$"):
        StagedDecay(optimizer, growth=0)
