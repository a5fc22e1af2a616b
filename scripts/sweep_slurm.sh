#!/usr/bin/env bash
# One SLURM job per combination (hydra-submitit-launcher), on GPUs. Set your partition;
# configs/hydra/launcher/slurm.yaml holds the defaults (1 GPU, 8 CPUs, 32 GB, 4 h).
# Without a cluster, hydra/launcher=submitit_local runs the same jobs here.
set -euo pipefail
cd "$(dirname "$0")/.."
python train.py -m hydra/launcher=slurm hydra.launcher.partition="${PARTITION:?set PARTITION}" \
  trainer=gpu model=vae,conv_vae data=mnist,fashion "$@"
