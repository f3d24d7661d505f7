"""Binary network architectures and their registry."""

from mstc.models import resnet, vgg  # noqa: F401  (registers the models)
from mstc.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
