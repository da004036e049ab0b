"""medcurate: a reproducible data-quality, curation and training pipeline for medical images."""

__version__ = "0.1.0"
