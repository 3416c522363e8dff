"""Model zoo: a registry of architectures (CNNs, CIFAR ResNets, sequence RNNs and transformers), models
from torchvision, timm and the user's own code (``SOURCE:NAME``), and teacher-to-student weight transfer."""

from kdcore.models import cnn, ecosystem, resnet, rnn, transformer  # noqa: F401  (registers the architectures)
from kdcore.models.ecosystem import weights_summary
from kdcore.models.registry import MODEL_SOURCES, MODELS, accepted_params, create_model, resolve_factory
from kdcore.models.transplant import TransplantReport, init_from_teacher, transplant

__all__ = [
    "MODELS",
    "MODEL_SOURCES",
    "TransplantReport",
    "accepted_params",
    "create_model",
    "init_from_teacher",
    "resolve_factory",
    "transplant",
    "weights_summary",
]
