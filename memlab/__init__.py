"""memlab: a lab bench for training-data memorization in text-to-image diffusion models."""
__version__ = "0.1.0"
