"""Latent distributions (``DiagonalGaussianDistribution``)."""
