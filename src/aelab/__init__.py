"""aelab: a PyTorch Lightning + Hydra research template for autoencoders."""

__version__ = "0.1.0"
