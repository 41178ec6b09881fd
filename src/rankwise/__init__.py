"""rankwise: continual learning of pre-trained models with rank-level adapters."""

__version__ = "0.1.0"
