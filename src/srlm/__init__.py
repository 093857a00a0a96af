"""srlm: train and evaluate small reasoning language models on math."""

__version__ = "0.1.0"
