"""Sweeps that last: failure-tolerant jobs (`jobs`), the results table of every multirun
(`table`), Optuna searches that persist, resume and prune (`optuna`), and a launcher whose
jobs each run in a process of their own (`launcher`).

The Hydra plugins themselves are thin shells in `hydra_plugins.aelab_plugins`, where Hydra
looks for them.
"""
