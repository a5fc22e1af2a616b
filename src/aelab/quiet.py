"""The one place where other libraries' console output is turned down.

Third-party libraries speak at WARNING and above: Lightning's "GPU available", "Seed set to"
and "`Trainer.fit` stopped" lines, MLflow's database set-up and Optuna's "A new study created"
say nothing that aelab's own lines (the run folder, `Resuming from ...`, the per-epoch line,
the search's status) do not. `hydra.verbose=lightning` (or `mlflow`, `optuna`, or `true` for
all) leaves a library at the level it sets itself (INFO for all three). Each library sets its
level when it is imported, so this runs after the import.

Also dropped: LIGHTNING_NOISE, and the FutureWarning that torch 2.14 raises at every run
inside Lightning's own `_pytree.py` (LeafSpec; nothing a user of Lightning can change).
"""

import logging
import os
import warnings

# Lightning's lines that say nothing to an aelab user, by logger: its advertisement for
# LitLogger; its note that the config's own model summary callback stands in for its default
# one; its WARNING that a run's new MLflow store has no experiment yet, as each new one has
LIGHTNING_NOISE = {
    "lightning.pytorch.utilities.rank_zero": (
        "litlogger",
        "Trainer already configured with model summary callbacks",
    ),
    "lightning.pytorch.loggers.mlflow": ("not found. Creating it.",),
}
LIBRARIES = {"lightning": ("lightning.pytorch", "lightning.fabric"), "optuna": ("optuna",)}


def asked_for(library: str) -> bool:
    """Whether this Hydra job's `hydra.verbose` names `library` (or is true)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    verbose = HydraConfig.get().verbose
    if isinstance(verbose, bool | str):
        return verbose is True or verbose == library
    return library in verbose


def _not_noise(record: logging.LogRecord) -> bool:
    return not any(noise in record.getMessage() for noise in LIGHTNING_NOISE[record.name])


def quiet_third_parties() -> None:
    """Lightning and Optuna at WARNING unless asked for (call it after importing them), MLflow
    too when it is imported later (through its MLFLOW_LOGGING_LEVEL, which a user's own setting
    overrides); Lightning's messages through Hydra's log handlers only (it adds its own console
    handler on import, which prints every line twice), minus LIGHTNING_NOISE."""
    warnings.filterwarnings(
        "ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning
    )
    if logging.getLogger().hasHandlers():
        logging.getLogger("lightning").handlers.clear()
    for name in LIGHTNING_NOISE:
        logging.getLogger(name).addFilter(_not_noise)
    for library, names in LIBRARIES.items():
        if not asked_for(library):
            for name in names:
                logging.getLogger(name).setLevel(logging.WARNING)
    if not asked_for("mlflow"):
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
