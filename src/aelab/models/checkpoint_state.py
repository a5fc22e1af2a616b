"""What a model's checkpoint holds beyond Lightning's own state, under the keys `rng_states` and
`val_metrics` (training.best_and_tested and api.load_run read the latter): the random state, so
that a resumed deterministic run draws the same noise as one never stopped, and the validation
metrics the checkpoint was chosen by, so that a sweep reports those of the checkpoint it tested."""

from typing import Any

import lightning as L
import torch

from aelab.models.stages import VAL


class CheckpointState(L.LightningModule):
    """The hooks that save the random states and validation metrics, and set the random states
    back at the first training step after a resume: once everything before it has run
    (Lightning calls no epoch-start hook when it resumes mid-epoch)."""

    _rng_states_to_restore: dict | None = None  # from the checkpoint resumed

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["val_metrics"] = {
            name: float(value)
            for name, value in self.trainer.callback_metrics.items()
            if name.startswith(f"{VAL}/")
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._rng_states_to_restore = checkpoint.get("rng_states")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        states = self._rng_states_to_restore
        if states:
            torch.set_rng_state(states["torch"])
            if "cuda" in states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
            self._rng_states_to_restore = None
