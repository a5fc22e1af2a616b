#!/usr/bin/env bash
# The same grid, jobs in parallel on this machine, each in a process of its own (a killed one
# fails alone).
# With N jobs at once give each 1/N of the cores, e.g. OMP_NUM_THREADS.
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py -m hydra/launcher=processes hydra.launcher.n_jobs=2 model=ae,vae model.latent_dim=2,8 "$@"
