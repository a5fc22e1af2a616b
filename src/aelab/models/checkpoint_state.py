"""What a model's checkpoint holds beyond Lightning's own state, under the keys `rng_states` and
`val_metrics` (training.best_and_tested and api.load_run read the latter): the random state, so
that a resumed deterministic run draws the same noise as one never stopped, and the validation
metrics the checkpoint was chosen by, so that a sweep reports those of the checkpoint it tested."""

from collections.abc import Mapping
from typing import Any

import torch


def save_state(checkpoint: dict, metrics: Mapping[str, Any], prefix: str) -> None:
    """The random states of torch and CUDA, and the `metrics` whose names start with `prefix`."""
    checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()
    checkpoint["val_metrics"] = {
        name: float(value) for name, value in metrics.items() if name.startswith(prefix)
    }


def restore_rng_states(states: dict) -> None:
    """The saved random states set back, at the first training step after a resume: once
    everything before it has run (Lightning calls no epoch-start hook when it resumes
    mid-epoch)."""
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
