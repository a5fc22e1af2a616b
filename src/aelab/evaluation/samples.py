"""Sample quality: how close a model's generated images come to the test images.

- `test/fd_classifier`: the Fréchet distance (Heusel et al., 2017) between Gaussians fitted to the
  two sets' features in the dataset's own classifier (`aelab.evaluation.classifier`),
      ||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2));
- `test/precision`, `test/recall` (Kynkäänniemi et al., 2019) in the same features: the share of
  generated images inside the real images' manifold (the union of balls reaching each real
  image's k-th nearest real neighbour), and the share of real images inside the generated one;
- `test/fid`: the standard FID, the same distance in Inception-v3's pool features
  (torchmetrics, with torch-fidelity's port of the original TensorFlow network).

Images are generated from the prior by models that have one (`sample`) and, for deterministic
autoencoders, from a Gaussian mixture fitted to their training codes (as the RAE paper and
pythae's GMM sampler do). Models that cannot generate get none of these metrics.
"""

import importlib.util
import logging
from pathlib import Path

import torch
from sklearn.mixture import GaussianMixture
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

from aelab.evaluation.probes import latent_codes
from aelab.evaluation.progress import Advance, no_progress, phase
from aelab.models import Autoencoder, AutoencoderModule
from aelab.models.generative import Generative

log = logging.getLogger(__name__)

MIXTURE_FIT_IMAGES = 10_000  # training codes the Gaussian mixture is fitted to, at most
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's download


def can_generate(model: AutoencoderModule) -> bool:
    """A prior to sample from, or a continuous code a mixture can be fitted to."""
    return isinstance(model, (Generative, Autoencoder))


@torch.inference_mode()
def generated_images(
    model: AutoencoderModule,
    train_images: torch.Tensor,
    count: int,
    seed: int,
    mixture_components: int = 10,
    batch_size: int = 1000,
    advance: Advance = no_progress,
) -> torch.Tensor:
    """`count` uint8 images (N, C, H, W) decoded from prior draws, or from a Gaussian mixture
    (full covariances) fitted to the codes of (at most `MIXTURE_FIT_IMAGES` of) `train_images`;
    on the CPU."""
    model.eval()
    if isinstance(model, Generative):
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(seed)
            images = []
            for n in torch.arange(count).split(batch_size):
                images.append(model.sample(len(n)))
                advance(len(n))
    elif isinstance(model, Autoencoder):
        # the mixture's fit costs as much as the rest of an evaluation together beyond a few
        # thousand codes: fitted to a fixed random subset of the training images
        chosen = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))
        subset = train_images[chosen[:MIXTURE_FIT_IMAGES].sort().values]
        codes = latent_codes(model, subset).double().numpy()
        mixture = GaussianMixture(mixture_components, random_state=seed).fit(codes)
        z = torch.from_numpy(mixture.sample(count)[0]).float()
        images = []
        for batch in z.split(batch_size):
            images.append(model.decode(batch.to(model.device)))
            advance(len(batch))
    else:
        raise ValueError(f"{type(model).__name__} cannot generate images")
    return torch.cat([(x.clamp(0, 1) * 255).round().to(torch.uint8).cpu() for x in images])


def frechet_distance(
    features: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 500
) -> float:
    """The Fréchet distance of uint8 image sets in `features` (a module with `num_features`
    mapping uint8 images to features; Inception when it is torchmetrics' own)."""
    device = next(features.parameters()).device
    metric = FrechetInceptionDistance(feature=features).to(device)
    for images, is_real in ((real, True), (fake, False)):
        for batch in images.split(batch_size):
            metric.update(batch.to(device), real=is_real)
    return float(metric.compute())


@torch.inference_mode()
def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) of feature sets (N, F)."""

    def radii(x: torch.Tensor) -> torch.Tensor:  # distance to the k-th nearest other point
        return torch.cat([torch.cdist(c, x).kthvalue(k + 1, dim=1).values for c in x.split(1000)])

    def inside(points: torch.Tensor, centres: torch.Tensor, radius: torch.Tensor) -> float:
        hits = [(torch.cdist(c, centres) <= radius).any(1) for c in points.split(1000)]
        return torch.cat(hits).float().mean().item()

    real, fake = real.double(), fake.double()
    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


def inception_fid(
    real: torch.Tensor,
    fake: torch.Tensor,
    weights: str | Path | None,
    device: torch.device,
    feature: int = 2048,
) -> float | None:
    """The standard FID (in the 2048-d pool features) on uint8 images (grey ones repeated to RGB;
    Inception resizes to 299); None, with one warning line, when torch-fidelity (the `fid`
    extra) is not installed or the weights cannot be downloaded. `feature` 64, 192 or 768 stops
    the network at an earlier block."""
    if importlib.util.find_spec("torch_fidelity") is None:
        log.warning(
            "test/fid skipped: torch-fidelity is not installed; pip install 'aelab[fid]' to "
            "enable it (or sample_metrics.inception=false to stop asking)"
        )
        return None
    try:
        metric = FrechetInceptionDistance(
            feature=feature,
            feature_extractor_weights_path=None if weights is None else str(weights),
        )
    except OSError as err:
        log.warning(
            f"test/fid skipped: the Inception weights could not be downloaded ({err}); give a "
            f"local {INCEPTION_FILE} with sample_metrics.inception_weights=PATH (or "
            "sample_metrics.inception=false to stop asking)"
        )
        return None
    metric = metric.to(device)
    with phase("test/fid (Inception)", len(real) + len(fake)) as advance:
        for images, is_real in ((real, True), (fake, False)):
            for batch in images.split(100):
                rgb = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
                metric.update(rgb.to(device), real=is_real)
                advance(len(batch))
        return float(metric.compute())
