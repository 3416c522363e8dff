"""Model zoo: a registry of architectures (CNNs, CIFAR ResNets, sequence RNNs and transformers) and
teacher-to-student weight transfer."""
from kdcore.models import cnn, resnet, rnn, transformer  # noqa: F401  (registers the architectures)
from kdcore.models.registry import MODELS, accepted_params, create_model
from kdcore.models.transplant import TransplantReport, init_from_teacher, transplant

__all__ = ["MODELS", "TransplantReport", "accepted_params", "create_model", "init_from_teacher", "transplant"]
