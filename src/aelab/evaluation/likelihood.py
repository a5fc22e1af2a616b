"""The importance-weighted likelihood of test images (Burda et al., 2016):

    log p(x) >= log (1/K) sum_k w_k,   w_k = p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x)

a bound that tightens as K grows; K = 5000 is the literature's protocol. Each model family
provides its log w_k (`log_importance_weights(x, samples) -> (samples, batch)`), so the two-layer
VAE or the VampPrior bring their own terms and this file only batches and sums them.
"""

import math
from typing import Any, Protocol, runtime_checkable

import torch

from aelab.data import to_float
from aelab.evaluation.progress import Advance, no_progress


@runtime_checkable
class ImportanceWeighted(Protocol):
    """A model with a likelihood: `test/nll_iw` is computed for every such model."""

    device: torch.device

    def log_importance_weights(self, x: torch.Tensor, samples: int) -> torch.Tensor: ...

    def eval(self) -> Any: ...  # a module's: the bound is taken in eval mode


@torch.inference_mode()
def importance_weighted_nll(
    model: ImportanceWeighted,
    images: torch.Tensor,
    samples: int = 5000,
    batch_elements: int = 8192,
    advance: Advance = no_progress,
) -> float:
    """-log p(x) in nats per image, the K = `samples` bound averaged over `images` (uint8).

    A few images at a time, with all their samples decoded in one pass of at most
    `batch_elements` images: kept small so the decoder's outputs are reused from the allocator's
    cache rather than fresh pages each pass (large blocks go back to the OS when freed).
    """
    model.eval()
    per_batch = max(1, batch_elements // samples)
    chunk = max(1, batch_elements // per_batch)
    total = 0.0
    for batch in images.split(per_batch):
        x = to_float(batch.to(model.device))
        log_w = torch.cat(
            [
                model.log_importance_weights(x, min(chunk, samples - start))
                for start in range(0, samples, chunk)
            ]
        )
        log_px = torch.logsumexp(log_w, dim=0) - math.log(samples)
        total -= log_px.sum().item()
        advance(len(batch))
    return total / len(images)
