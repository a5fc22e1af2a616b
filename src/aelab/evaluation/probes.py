"""How much the latent codes know about the labels: k-NN and linear-probe accuracy, on in-memory
tensors in batches."""

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from aelab.data import to_float
from aelab.data.batches import TensorImages
from aelab.evaluation.cached import cached_numbers, digest
from aelab.evaluation.progress import Advance, no_progress, phase
from aelab.models import AutoencoderModule

log = logging.getLogger(__name__)
PIXEL_FLOATS_BYTES = 2**30  # the pixel baselines' float copy of the training images, at most
PROBE_STEPS = 100  # L-BFGS iterations of the linear probe
PROBE_EVALUATIONS = PROBE_STEPS * 5 // 4  # at most: torch's L-BFGS default max_eval


@torch.no_grad()
def latent_codes(
    model: AutoencoderModule,
    images: torch.Tensor,
    batch_size: int = 1024,
    advance: Advance = no_progress,
) -> torch.Tensor:
    """The code of every image (the posterior mean for a VAE), on the CPU."""
    model.eval()
    codes = []
    for batch in images.split(batch_size):
        codes.append(model.encode(to_float(batch.to(model.device))).flatten(1).cpu())
        advance(len(batch))
    return torch.cat(codes)


@torch.no_grad()
def knn_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 10,
    advance: Advance = no_progress,
) -> float:
    """Accuracy of a k-nearest-neighbour vote (Euclidean distance) fitted on the training set."""
    train_x, test_x = train_x.float(), test_x.float()
    votes = []
    for chunk in test_x.split(512):
        nearest = torch.cdist(chunk, train_x).topk(k, largest=False).indices
        votes.append(torch.mode(train_y[nearest], dim=1).values)
        advance(len(chunk))
    return (torch.cat(votes) == test_y).float().mean().item()


def linear_probe_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    steps: int = PROBE_STEPS,
    weight_decay: float = 1e-4,
    advance: Advance = no_progress,
) -> float:
    """Accuracy of multinomial logistic regression on standardised features (full-batch L-BFGS,
    deterministic), fitted on the training set."""
    mean, std = train_x.float().mean(0), train_x.float().std(0).clamp_min(1e-6)
    train_x, test_x = (train_x.float() - mean) / std, (test_x.float() - mean) / std
    classes = int(max(train_y.max(), test_y.max())) + 1
    linear = torch.nn.Linear(train_x.shape[1], classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(
        linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(train_x), train_y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        advance(1)
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (linear(test_x).argmax(1) == test_y).float().mean().item()


def pixel_baselines(
    train: TensorImages,
    test: TensorImages,
    k: int,
    cache_dir: str | Path,
    dataset: str,
    max_bytes: int = PIXEL_FLOATS_BYTES,
) -> dict[str, float]:
    """k-NN and linear-probe accuracy on raw pixels, the baselines the codes are read against:
    computed once per dataset and split (`<cache_dir>/probes/<dataset>-<key>.json`), since
    every job of a sweep would otherwise repeat the same minutes of work. Both hold the
    training images as floats: beyond `max_bytes` of them (a folder larger than memory, CelebA)
    they are skipped, with one line saying so."""
    floats = 4 * train.images.numel()
    if floats > max_bytes:
        log.info(
            f"No test/knn_acc_pixels, test/linear_acc_pixels: the {len(train)} training images "
            f"would take {floats / 2**30:.1f} GiB as floats (the limit: {max_bytes / 2**30:.1f})"
        )
        return {}

    def compute() -> dict[str, float]:
        train_px, test_px = train.images.flatten(1).float(), test.images.flatten(1).float()
        train_y, test_y = train.labels.cpu(), test.labels.cpu()
        with phase("k-NN on pixels", len(test), "test images") as advance:
            knn = knn_accuracy(train_px.cpu(), train_y, test_px.cpu(), test_y, k, advance)
        with phase(
            "linear probe on pixels", PROBE_EVALUATIONS, "L-BFGS evaluations at most"
        ) as advance:
            probe = linear_probe_accuracy(
                train_px.cpu(), train_y, test_px.cpu(), test_y, advance=advance
            )
        return {"test/knn_acc_pixels": knn, "test/linear_acc_pixels": probe}

    key = digest({"knn_k": k}, train.images, train.labels, test.images, test.labels)
    return cached_numbers(Path(cache_dir) / "probes" / f"{dataset}-{key}.json", compute)
