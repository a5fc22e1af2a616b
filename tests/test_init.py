"""Initialisation (`model.init`, `model.output_bias`) and the MLP's BatchNorm: the output bias
on tiny images computed by hand, Glorot's bounds, and when the initialisation happens (a new
fit) and when not (resume, init_from, a second fit, validation)."""

import math
import os
from datetime import timedelta
from functools import partial
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from conftest import free_port
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aelab import runfolder
from aelab.errors import ConfigError
from aelab.models import VAE, Autoencoder
from aelab.nets import MLP, ConvNet, ResNet
from aelab.nets import init as nets_init
from aelab.nets.init import glorot_, output_layer, pixel_means, set_output_bias

MLP8 = {"_target_": "aelab.nets.MLP", "hidden_dims": [8]}
FROZEN = partial(torch.optim.SGD, lr=0.0)  # steps that leave every weight as it is
LOGIT_CLIP = math.log(0.001 / 0.999)  # -6.9067547: the logit of a pixel that is always 0

# four 1x2x2 images; pixel by pixel: always 0, always 255, 0/255/255/51, 255/0/0/0
PIXELS = torch.tensor([[0, 255, 0, 255], [0, 255, 255, 0], [0, 255, 255, 0], [0, 255, 51, 0]])
IMAGES = PIXELS.to(torch.uint8).view(4, 1, 2, 2)
# means 0 -> 0.001, 1 -> 0.999, (0 + 1 + 1 + 0.2) / 4 = 0.55, 0.25; their logits
EXPECTED = torch.tensor([LOGIT_CLIP, -LOGIT_CLIP, math.log(0.55 / 0.45), math.log(1 / 3)])


class Images(L.LightningDataModule):
    """A datamodule of uint8 images whose `train_set.images` are those images, as aelab's."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images

    def setup(self, stage: str) -> None:
        self.train_set = SimpleNamespace(images=self.images)

    def train_dataloader(self) -> DataLoader:
        x = self.images.float() / 255
        return DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=2)


def images(fill: int, n: int = 4, shape: tuple[int, ...] = (1, 4, 4)) -> torch.Tensor:
    return torch.full((n, *shape), fill, dtype=torch.uint8)


def fit(model: L.LightningModule, data: L.LightningDataModule, steps: int = 1, **kw) -> L.Trainer:
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data, **kw)
    return trainer


def vae(**keys) -> VAE:
    return VAE((1, 4, 4), latent_dim=2, **{"net": MLP8, "optimizer": FROZEN, **keys})


def output_bias_of(model: L.LightningModule) -> torch.Tensor:
    return output_layer(model.net, (1, 4, 4)).bias.detach().clone()


def test_the_output_bias_is_the_logit_of_each_pixel_s_clipped_training_mean():
    net = MLP((1, 2, 2), latent_dim=2, hidden_dims=[3])
    set_output_bias(net, pixel_means(IMAGES))
    assert torch.allclose(net.decoder[0][-1].bias, EXPECTED, atol=1e-6)
    # a sigmoid of it gives the clipped means back: every pixel starts at its marginal
    probabilities = torch.sigmoid(net.decoder(torch.zeros(1, 2)).flatten())
    hidden = net.decoder[0][:-1](torch.zeros(1, 2))
    assert torch.allclose(
        torch.sigmoid(net.decoder[0][-1](hidden)).flatten(), probabilities, atol=1e-6
    )


def test_the_means_are_summed_a_chunk_at_a_time(monkeypatch):
    monkeypatch.setattr(nets_init, "CHUNK", 3)
    chunks = []
    means = pixel_means(IMAGES, after_chunk=lambda: chunks.append(1))
    assert len(chunks) == 2  # 4 images: 3, then 1
    assert torch.allclose(means.flatten(), torch.tensor([0.0, 1.0, 0.55, 0.25], dtype=means.dtype))


def test_a_convolutional_decoder_gets_one_bias_per_channel():
    # channel 0 always 0 (clipped), channel 1 a quarter of its pixels 255: the mean 0.25
    x = torch.zeros(2, 2, 4, 4, dtype=torch.uint8)
    x[:, 1, :2, :2] = torch.tensor([[255, 0], [0, 0]], dtype=torch.uint8).repeat(2, 1, 1)
    x[0, 1, 2:, 2:] = 255  # and 4 more of 32: (2 * 1 + 4) / 32 = 0.1875
    net = ConvNet((2, 4, 4), latent_dim=2, channels=[4])
    set_output_bias(net, pixel_means(x))
    expected = torch.tensor([LOGIT_CLIP, math.log(0.1875 / 0.8125)])
    assert torch.allclose(net.decoder[-1].bias, expected, atol=1e-6)
    resnet = ResNet((3, 8, 8), latent_dim=2, channels=4, max_channels=8)
    assert output_layer(resnet, (3, 8, 8)) is resnet.decoder[-1]


def test_the_autoencoder_inverts_its_own_output_activation():
    means = torch.tensor([0.0, 0.3, 1.0])
    clipped = torch.tensor([0.001, 0.3, 0.999])
    for name, expected in ((None, clipped), ("relu", clipped), ("sigmoid", torch.logit(clipped))):
        model = Autoencoder((1, 1, 3), 2, output_activation=name, output_bias="data")
        assert torch.allclose(
            nets_init.output_bias(means.view(1, 1, 3), 3, model.output_inverse), expected
        )
    with pytest.raises(
        ConfigError,
        match=r"^model.output_bias=data needs an invertible model.output_activation, not 'gelu'",
    ):
        Autoencoder((1, 1, 3), 2, output_activation="gelu", output_bias="data")


class NoBias(nn.Module):
    """A network of one's own whose decoder ends in a Linear without a bias."""

    def __init__(self, image_shape, latent_dim, output_layer: bool = False):
        super().__init__()
        pixels = math.prod(image_shape)
        self.features = 4
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 4))
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, pixels, bias=False), nn.Unflatten(1, tuple(image_shape))
        )
        if output_layer:  # the contract's other half: a layer named as the output's
            self.extra = nn.Linear(pixels, pixels)
            self.output_layer = self.extra


def test_a_network_of_one_s_own_takes_the_data_bias_by_contract_or_says_why_not():
    net = {"_target_": f"{__name__}.NoBias"}
    with pytest.raises(
        ConfigError,
        match=r"^model.output_bias=data: NoBias has no output layer with a bias of 16 \(one per pixel\) or 1",
    ):
        vae(net=net, output_bias="data")
    vae(net=net)  # the default bias asks nothing of it
    model = vae(net={**net, "output_layer": True}, output_bias="data")
    assert output_layer(model.net, (1, 4, 4)) is model.net.extra


@pytest.mark.parametrize(("key", "value"), [("init", "xavier"), ("output_bias", "mean")])
def test_an_unknown_choice_is_one_line_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^model.{key}='{value}' is unknown; allowed: \["):
        vae(**{key: value})


def glorot_bound(weight: torch.Tensor) -> float:
    """sqrt(6 / (fan_in + fan_out)); a (transposed) convolution's fans count its kernel."""
    return math.sqrt(6 / ((weight.shape[0] + weight.shape[1]) * weight[0, 0].numel()))


def test_glorot_weights_are_within_their_bound_and_fill_it_and_biases_are_zero():
    torch.manual_seed(0)
    model = VAE((1, 28, 28), latent_dim=20, net={"_target_": "aelab.nets.ConvNet"})
    model.to_mlp = MLP((1, 28, 28), latent_dim=20, hidden_dims=[200])
    glorot_(model)
    layers = [m for m in model.modules() if isinstance(m, nets_init.WEIGHTED)]
    assert {type(m) for m in layers} == {nn.Linear, nn.Conv2d, nn.ConvTranspose2d}
    for layer in layers:
        bound = glorot_bound(layer.weight)
        largest = layer.weight.abs().max().item()
        # PyTorch's default, 1/sqrt(fan_in), stays below 0.9 of Glorot's bound in these layers
        assert 0.9 * bound < largest <= bound, (layer, largest, bound)
        assert not layer.bias.any()


def test_a_new_fit_sets_the_weights_a_resumed_one_keeps_the_checkpoint_s(tmp_path):
    torch.manual_seed(0)
    model = vae(init="glorot", output_bias="data")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = fit(model, Images(images(51)), steps=2)  # every pixel 0.2; one epoch
    assert torch.allclose(output_bias_of(model), torch.full((16,), math.log(0.25)))
    assert not model.net.encoder[1][0].bias.any()  # Glorot's zero biases
    assert not torch.equal(model.net.encoder[1][0].weight, before["net.encoder.1.0.weight"])
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    resumed = vae(init="glorot", output_bias="data")
    fit(resumed, Images(images(204)), steps=4, ckpt_path=tmp_path / "a.ckpt")  # other data
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, saved[key]), key

    # init_from: the weights of the checkpoint, trained on other data
    started = vae(init="glorot", output_bias="data")
    cfg = OmegaConf.create(
        {
            "ckpt_path": None,
            "init_from": str(tmp_path / "a.ckpt"),
            "paths": {"output_dir": str(tmp_path)},
        }
    )
    assert runfolder.starting_point(cfg, started) is None
    fit(started, Images(images(204)))
    for key, value in started.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_a_second_fit_or_a_validation_leaves_the_weights_alone():
    model = vae(output_bias="data")
    fit(model, Images(images(51)))
    with torch.no_grad():
        output_layer(model.net, (1, 4, 4)).bias.fill_(0.125)
    fit(model, Images(images(204)))
    assert torch.equal(output_bias_of(model), torch.full((16,), 0.125))
    fresh = vae(output_bias="data")
    bias = output_bias_of(fresh)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    data = Images(images(51))
    data.val_dataloader = data.train_dataloader
    trainer.validate(fresh, datamodule=data, verbose=False)
    assert torch.equal(output_bias_of(fresh), bias)


def test_the_default_changes_nothing_and_checkpoints_of_either_load_into_the_other():
    torch.manual_seed(0)
    default = vae()
    weights = {k: v.clone() for k, v in default.state_dict().items()}
    fit(default, Images(images(51)))
    for key, value in default.state_dict().items():
        assert torch.equal(value, weights[key]), key
    chosen = vae(init="glorot", output_bias="data")
    assert list(chosen.state_dict()) == list(default.state_dict())  # no key of its own
    chosen.load_state_dict(default.state_dict(), strict=True)
    default.load_state_dict(chosen.state_dict(), strict=True)
    # an old checkpoint's hyperparameters, without the two keys, build the default
    old = {k: v for k, v in chosen.hparams.items() if k not in ("init", "output_bias")}
    assert VAE(**old).init == "default" and VAE(**old).output_bias == "default"


def test_batch_norm_sits_between_each_hidden_linear_and_its_activation_and_trains():
    torch.manual_seed(0)
    net = {**MLP8, "hidden_dims": [8, 6], "activation": "tanh", "batch_norm": True}
    model = VAE((1, 4, 4), latent_dim=2, net=net, optimizer=partial(torch.optim.Adam, lr=1e-2))
    for half in (model.net.encoder[1], model.net.decoder[0]):
        kinds = [type(m).__name__ for m in half]
        assert kinds[:3] == ["Linear", "BatchNorm1d", "Tanh"], kinds
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == 4
    assert type(model.net.decoder[0][-1]) is nn.Linear  # the output layer: no BatchNorm
    x = torch.rand(32, 1, 4, 4).round()
    model.eval()
    before = model.loss_terms(x, x)["loss"].item()
    model.train()
    optimizer = model.configure_optimizers()
    for _ in range(30):
        optimizer.zero_grad()
        model.loss_terms(x, x)["loss"].backward()
        optimizer.step()
    model.eval()
    assert model.loss_terms(x, x)["loss"].item() < before
    assert model.reconstruct(x[:1]).shape == (1, 1, 4, 4)  # one image: running statistics


def _ddp_rank(rank: int, port: int, folder) -> None:
    """One of two CPU ranks (environment variables as torchrun sets them), each seeded
    differently: its own PyTorch and Glorot draws before the fit starts."""
    os.environ |= {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": "2",
        "NODE_RANK": "0",
        "LOCAL_RANK": str(rank),
        "RANK": str(rank),
    }
    torch.manual_seed(rank)
    model = vae(init="glorot", output_bias="data")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=L.pytorch.strategies.DDPStrategy(timeout=timedelta(seconds=60)),
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=Images(images(51)))
    torch.save(model.state_dict(), folder / f"rank{rank}.pt")


@pytest.mark.slow
def test_under_ddp_every_rank_starts_from_rank_0_s_weights(tmp_path):
    torch.multiprocessing.spawn(_ddp_rank, args=(free_port(), tmp_path), nprocs=2)
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for key, value in first.items():
        assert torch.equal(value, second[key]), key
    assert torch.allclose(first["net.decoder.0.2.bias"], torch.full((16,), math.log(0.25)))


@pytest.mark.parametrize("model", ["vae", "conv_vae", "two_layer_vae", "ladder_vae", "vqvae", "ae"])
def test_every_shipped_model_starts_from_glorot_and_the_data_bias(compose_cfg, model):
    """The default chosen from docs/models.md's measurements, in the keys every model shares."""
    cfg = compose_cfg(f"model={model}")
    assert (cfg.model.init, cfg.model.output_bias) == ("glorot", "data")
    resnet = OmegaConf.to_container(cfg.model) | {"net": {"_target_": "aelab.nets.ResNet"}}
    for config, shape in ((cfg.model, [1, 28, 28]), (resnet, [3, 32, 32])):
        built = instantiate(config, image_shape=shape, _convert_="all")  # has an output layer
        assert built.output_bias == "data"
