"""scalelab: language-model pretraining research at small and mid scale."""
__version__ = "0.1.0"
