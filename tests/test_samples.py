"""Sample-quality metrics: the feature classifier and its cache, Fréchet distances, precision and
recall, Inception FID with and without its weights, and the order the metric must put things in."""

import copy
import logging
import math
import urllib.error

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from aelab.data.batches import TensorImages
from aelab.evaluation import classifier as classifier_module
from aelab.evaluation.classifier import Recipe, feature_classifier
from aelab.evaluation.samples import (
    frechet_distance,
    generated_images,
    inception_fid,
    precision_recall,
)
from aelab.models import VAE, Autoencoder


class Coordinates(nn.Module):
    """Features that are the inputs themselves (a hand-computable feature space)."""

    num_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # gives the module a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    real = torch.tensor([[0, 0], [2, 0], [0, 2], [2, 2], [1, 5]], dtype=torch.uint8)
    fake = real + torch.tensor([3, 4], dtype=torch.uint8)  # same covariance, mean moved by (3, 4)
    assert frechet_distance(Coordinates(), real, fake) == pytest.approx(25.0, abs=1e-6)
    assert frechet_distance(Coordinates(), real, real) == pytest.approx(0.0, abs=1e-6)


def test_precision_and_recall_by_hand():
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # k=1: each real ball has radius 1
    fake = torch.tensor([[0.5], [10.0]])  # 0.5 lies in a real ball, 10 does not
    # the two fake points are 9.5 apart, so each fake ball (radius 9.5) holds every real point
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(real, real, k=3) == (1.0, 1.0)


def strokes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-like images: ten classes of three bright 3-pixel-wide strokes on black, each image
    its class's strokes shifted by up to 2 pixels and dimmed at random."""
    rng = np.random.default_rng(seed)
    prototypes = np.zeros((10, 28, 28))
    for prototype in prototypes:
        for (x0, y0), (x1, y1) in rng.integers(5, 23, (3, 2, 2)):
            for t in np.linspace(0, 1, 40):
                x, y = round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t)
                prototype[y - 1 : y + 2, x - 1 : x + 2] = 255
    labels = rng.integers(0, 10, n)
    shifts = rng.integers(-2, 3, (n, 2))
    images = np.stack(
        [np.roll(prototypes[c], tuple(d), (0, 1)) for c, d in zip(labels, shifts, strict=True)]
    )
    images = images * rng.uniform(0.6, 1.0, (n, 1, 1))
    return torch.from_numpy(images.round().astype(np.uint8)).unsqueeze(1), torch.from_numpy(labels)


@pytest.fixture(scope="module")
def pool():
    """Train and test images drawn from the same ten classes of strokes."""
    images, labels = strokes(1280, seed=0)
    return TensorImages(images[:1024], labels[:1024]), TensorImages(images[1024:], labels[1024:])


@pytest.fixture(scope="module")
def features(pool, tmp_path_factory):
    train, test = pool
    cache = tmp_path_factory.mktemp("cache")
    model, accuracy = feature_classifier(train, test, cache, "synthetic", Recipe(epochs=2), "cpu")
    return model, accuracy, cache


def test_the_classifier_is_the_recipes_whatever_ran_before(pool, features, tmp_path):
    """Its initial weights, batch order and dropout come from the recipe's seed, not from the
    global random state that the evaluation left before it (its initial weights did: two
    sittings trained the same recipe to 98.49% and 98.79% on MNIST, and the Fréchet distances
    of their rows did not compare)."""
    train, test = pool
    model, accuracy, _ = features
    torch.manual_seed(12345)
    torch.rand(7)
    again, again_accuracy = feature_classifier(
        train, test, tmp_path, "synthetic", Recipe(epochs=2), "cpu"
    )
    assert again_accuracy == accuracy
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_classifier_is_trained_once_and_cached(pool, features, monkeypatch):
    train, test = pool
    model, accuracy, cache = features
    assert accuracy > 0.9  # ten classes of strokes, two epochs
    (saved,) = (cache / "classifiers").glob("synthetic-*.pt")

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(L.Trainer, "fit", no_training)
    again, again_accuracy = feature_classifier(train, test, cache, "synthetic", Recipe(epochs=2))
    assert again_accuracy == accuracy
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="retrained"):  # other images: another key
        feature_classifier(
            TensorImages(train.images[:512], train.labels[:512]),
            test,
            cache,
            "synthetic",
            Recipe(epochs=2),
        )
    flipped = TensorImages(test.images, (test.labels + 1) % 10)  # its accuracy on these images
    assert feature_classifier(train, flipped, cache, "synthetic", Recipe(epochs=2))[1] < 0.1
    saved.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match=r"synthetic-.*\.pt: not a readable classifier.*delete it"):
        feature_classifier(train, test, cache, "synthetic", Recipe(epochs=2))


def fit(model: L.LightningModule, train: TensorImages, epochs: int) -> L.LightningModule:
    data = torch.utils.data.TensorDataset(train.images.float() / 255, train.labels)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=64, shuffle=True))
    return model.eval()


def test_the_metric_orders_real_trained_untrained_and_noise(pool, features):
    """Test images against training images score better than a trained VAE's samples, which
    score better than the same VAE's at step 0, which score better than noise."""
    train, test = pool
    classifier = features[0]
    torch.manual_seed(0)
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3}
    mlp = {"_target_": "aelab.nets.MLP", "hidden_dims": [128]}
    untrained = VAE((1, 28, 28), latent_dim=8, net=mlp, optimizer=adam)
    trained = fit(copy.deepcopy(untrained), train, epochs=8)
    n = len(test)
    noise = torch.randint(
        0, 256, test.images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    sets = {
        "train": train.images[:n],
        "trained": generated_images(trained, train.images, n, seed=0),
        "untrained": generated_images(untrained, train.images, n, seed=0),
        "noise": noise,
    }
    fd = {name: frechet_distance(classifier, test.images, images) for name, images in sets.items()}
    assert fd["train"] < fd["trained"] < fd["untrained"] < fd["noise"], fd
    test_features = classifier.features(test.images)
    precision = {
        name: precision_recall(test_features, classifier.features(images))[0]
        for name, images in sets.items()
    }
    assert (
        precision["train"] > precision["trained"] > precision["untrained"] >= precision["noise"]
    ), precision


def test_an_autoencoder_generates_from_a_mixture_of_its_training_codes(pool):
    train, _ = pool
    torch.manual_seed(0)
    ae = Autoencoder(
        (1, 28, 28), latent_dim=4, net={"_target_": "aelab.nets.MLP", "hidden_dims": [32]}
    )
    images = generated_images(ae, train.images, 50, seed=3, mixture_components=2)
    assert images.shape == (50, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(images, generated_images(ae, train.images, 50, seed=3, mixture_components=2))
    assert not torch.equal(
        images, generated_images(ae, train.images, 50, seed=4, mixture_components=2)
    )


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A full-size Inception weight file of random values, in torch-fidelity's format."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(
            fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None
        )
        torch.manual_seed(0)
        network = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(network.state_dict(), path)
    return path


def test_inception_fid_loads_a_local_weight_file(pool, inception_weights):
    train, test = pool
    assert inception_weights.stat().st_size > 90e6  # every tensor of the real network
    # every weight is loaded (strictly); the 64-d features of the first block keep it fast
    cpu = torch.device("cpu")
    fid = inception_fid(test.images[:6], train.images[:6], inception_weights, cpu, feature=64)
    assert math.isfinite(fid) and fid > 0


def test_inception_fid_without_weights_says_so_in_one_line(pool, monkeypatch, caplog):
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(fidelity, "load_state_dict_from_url", offline)
    _, test = pool
    with caplog.at_level(logging.WARNING):
        assert inception_fid(test.images[:4], test.images[4:8], None, torch.device("cpu")) is None
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "test/fid skipped" in line and "sample_metrics.inception_weights=PATH" in line
    assert "\n" not in line
    assert classifier_module  # the classifier module imports without torch-fidelity's weights


def test_a_missing_inception_weight_file_is_one_line_before_any_work(tmp_path):
    from hydra import compose, initialize_config_dir

    from aelab.config import CONFIG_DIR, prepare_hydra
    from aelab.errors import ConfigError
    from aelab.eval import evaluate

    prepare_hydra()
    missing = tmp_path / "weights.pth"
    overrides = [f"ckpt_path={tmp_path}/none.ckpt", f"sample_metrics.inception_weights={missing}"]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[*overrides, f"paths.output_dir={tmp_path}"])
    with pytest.raises(
        ConfigError, match=r"sample_metrics.inception_weights=.*weights.pth' is not a file"
    ):
        evaluate(cfg)
