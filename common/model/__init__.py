"""The generative model: encoder, networks, conditioning, trainer and the single-site estimator."""
