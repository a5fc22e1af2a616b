#!/usr/bin/env bash
# Grid search: every combination, one folder and one TensorBoard run per job, one results table.
#   logs/train/multiruns/<timestamp>/{0,1,...}/  and  results.csv / results.md there, with
#   summary.csv / summary.md (grouped by every override but seed: mean, std, n)
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py -m model=ae,vae model.latent_dim=2,8,32 "$@"
