#!/usr/bin/env bash
# Optuna (TPE, seeded, median pruning) over the VAE's learning rate, latent size, hidden size and
# batch size, in the study logs/train/searches/vae_optuna/study.db: run it again to continue it,
# or twice at once for two workers. The best parameters are printed and written to
# <sweep dir>/optimization_results.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py hparams_search=vae_optuna hydra.sweeper.n_trials=20 "$@"
