"""Paper-faithful models of the ViT scaling study: pure PyTorch, no I/O, no Ray, no MLflow."""
from models.registry import PAPER_MODELS, ModelSpec, UnknownModelError, build_model, model_spec

__all__ = ["PAPER_MODELS", "ModelSpec", "UnknownModelError", "build_model", "model_spec"]
