"""Backbones and few-shot methods, created by name from config."""
from .backbones import BACKBONES, Backbone, Conv4, ResNet12, backbones, create_backbone
from .classifier import METHODS, CosineClassifier, FewShotClassifier, ProtoNet, class_means, methods

__all__ = ["BACKBONES", "Backbone", "Conv4", "ResNet12", "backbones", "create_backbone",
           "METHODS", "CosineClassifier", "FewShotClassifier", "ProtoNet", "class_means", "methods", "create_model"]


def create_model(method: str, backbone: str, backbone_options: dict = None,
                 options: dict = None) -> FewShotClassifier:
    """Build ``method`` on top of backbone ``backbone`` (timm-style ``create_model``)."""
    net = create_backbone(backbone, **(backbone_options or {}))
    return METHODS.create(method, where=f"model.options for method {method!r}", backbone=net,
                          **(options or {}))

from .deepemd import DeepEMD, cross_reference_weights, emd_logits, node_cost  # noqa: E402  (registers "deepemd")
