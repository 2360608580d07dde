"""Example stage functions used by the pipelines in ``configs/``."""
