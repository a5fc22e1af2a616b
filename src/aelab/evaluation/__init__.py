"""What a trained model learned: a run loaded from its checkpoint, likelihood, latent metrics."""
