"""The Hydra configs, shipped inside the package: one folder per group, one YAML per choice."""
