#!/usr/bin/env bash
# Optuna (TPE, seeded) over the VAE's learning rate, latent size, hidden size and batch size.
# The best parameters are printed and written to <sweep dir>/optimization_results.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py hparams_search=vae_optuna hydra.sweeper.n_trials=20 "$@"
