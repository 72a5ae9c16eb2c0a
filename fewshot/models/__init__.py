"""Backbones and few-shot methods, created by name from config."""
from .backbones import BACKBONES, Backbone, Conv4, ResNet12, backbones, create_backbone
from .classifier import METHODS, CosineClassifier, FewShotClassifier, ProtoNet, class_means, methods

__all__ = ["BACKBONES", "Backbone", "Conv4", "ResNet12", "backbones", "create_backbone",
           "METHODS", "CosineClassifier", "FewShotClassifier", "ProtoNet", "class_means", "methods", "create_model"]


def create_model(method: str, backbone: str, backbone_options: dict = None,
                 options: dict = None, where: str = "") -> FewShotClassifier:
    """Build ``method`` on top of backbone ``backbone`` (timm-style ``create_model``).

    Errors name a bad option as ``options.KEY`` or ``backbone_options.KEY``, under ``where``
    when given (the config section the arguments were read from, e.g. ``model``)."""
    prefix = f"{where}." if where else ""
    net = create_backbone(backbone, where=prefix + "backbone_options", **(backbone_options or {}))
    return METHODS.create(method, where=prefix + "options", backbone=net, **(options or {}))

from .deepemd import DeepEMD, cross_reference_weights, emd_logits, node_cost  # noqa: E402  (registers "deepemd")
