"""The feature space of the sample metrics: a small CNN classifier that aelab trains once per
dataset on its training images, then keeps in `paths.cache_dir`.

Fréchet distances and precision/recall need features in which images of a dataset differ the way
people see them differ. Inception's features (FID) are the standard for natural images but were
never trained on digits or clothes; a classifier of the dataset's own classes is the usual
stand-in for MNIST-like data (as in the "Fréchet classifier distance" of many VAE papers). Its
recipe is fixed and seeded, so every run of every model is measured in the same features; the
cache file is named by a hash of the training images and the recipe.
"""

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler

from aelab.data import to_float
from aelab.data.batches import TensorImages
from aelab.errors import DataError
from aelab.evaluation.cached import digest
from aelab.evaluation.progress import Advance, phase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How the classifier is trained: part of its cache key."""

    epochs: int = 8
    batch_size: int = 128
    lr: float = 1e-3
    width: int = 32
    features: int = 128
    seed: int = 0
    dropout: float = 0.25
    version: int = 3  # bumped when the network or the training changes (3: seeded initial weights)


class FeatureClassifier(L.LightningModule):
    """conv(3x3, w) - pool - conv(3x3, 2w) - pool - linear(features) - linear(classes), with
    dropout before the two linear layers in training, Adam with a cosine learning rate.

    `forward` maps uint8 images (N, C, H, W) to the `features`-d penultimate activations: the
    space the sample metrics compare images in.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        classes: int,
        width: int,
        features: int,
        lr: float,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        self.num_features = features
        self.lr = lr
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width * (height // 4) * (width_px // 4), features),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(to_float(images))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.head(self(images)), labels)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.trainer.max_epochs or 1)
        return {"optimizer": optimizer, "lr_scheduler": cosine}

    @torch.inference_mode()
    def features(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Features of uint8 images, on the CPU, computed on this module's device."""
        self.eval()
        return torch.cat([self(b.to(self.device)).cpu() for b in images.split(batch_size)])

    @torch.inference_mode()
    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.eval()
        logits = self.head(self.features(images).to(self.device))
        return (logits.argmax(1).cpu() == labels.cpu()).float().mean().item()


class Shuffled(Sampler[torch.Tensor]):
    """The indices of each batch of one seeded shuffle per epoch, as whole tensors (the batches
    are sliced from the in-memory images at once, not gathered image by image)."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size = size, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(torch.randperm(self.size, generator=self.generator).split(self.batch_size))

    def __len__(self) -> int:
        return -(-self.size // self.batch_size)


class Advancing(L.Callback):
    """Moves an evaluation phase's progress by one per training batch."""

    def __init__(self, advance: Advance) -> None:
        self.advance = advance

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.advance(1)


def feature_classifier(
    train: TensorImages,
    test: TensorImages,
    cache_dir: str | Path,
    dataset: str,
    recipe: Recipe = Recipe(),
    accelerator: str = "auto",
) -> tuple[FeatureClassifier, float]:
    """The dataset's classifier and its accuracy on `test`: read from the cache, or trained and
    cached (`<cache_dir>/classifiers/<dataset>-<key>.pt`, keyed by the training images). The
    accuracy is measured on the test images given, which may differ from those of the run that
    trained it (binarized test images, a classifier trained on grey levels)."""
    classes = int(train.labels.max()) + 1
    channels, height, width = train.images.shape[1:]
    image_shape = (channels, height, width)
    with torch.random.fork_rng():  # the recipe's initial weights, whatever ran before
        torch.manual_seed(recipe.seed)
        model = FeatureClassifier(
            image_shape, classes, recipe.width, recipe.features, recipe.lr, recipe.dropout
        )
    path = (
        Path(cache_dir)
        / "classifiers"
        / f"{dataset}-{digest(asdict(recipe), train.images, train.labels)}.pt"
    )
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["state_dict"])
        except Exception as err:
            raise DataError(
                f"{path}: not a readable classifier ({type(err).__name__}); delete it to retrain"
            ) from err
        return model, model.accuracy(test.images, test.labels)
    log.info(f"Training the {dataset} feature classifier once ({recipe.epochs} epochs) -> {path}")
    sampler = Shuffled(len(train), recipe.batch_size, recipe.seed)
    name = f"training the {dataset} feature classifier"
    with torch.random.fork_rng(), phase(name, recipe.epochs * len(sampler), "batches") as advance:
        torch.manual_seed(recipe.seed)
        trainer = L.Trainer(
            max_epochs=recipe.epochs,
            accelerator=accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            deterministic=True,
            callbacks=[Advancing(advance)],
        )
        trainer.fit(model, DataLoader(train, sampler=sampler, batch_size=None))
    accuracy = model.to(trainer.strategy.root_device).accuracy(test.images, test.labels)
    model.cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"state_dict": model.state_dict(), "test_accuracy": accuracy}, partial)
    partial.replace(path)
    log.info(f"The {dataset} feature classifier: test accuracy {accuracy:.2%}")
    return model, accuracy
