"""Model zoo: a registry of architectures (CNNs, CIFAR ResNets) and teacher-to-student weight transfer."""
from kdcore.models import cnn, resnet  # noqa: F401  (registers the architectures)
from kdcore.models.registry import MODELS, accepted_params, create_model
from kdcore.models.transplant import init_from_teacher

__all__ = ["MODELS", "accepted_params", "create_model", "init_from_teacher"]
