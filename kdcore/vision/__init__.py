"""Image input: the spec stored with every image model (``image.json``) and ``classify_images`` to
run a trained (or registered) model on new pictures."""

from kdcore.vision.classify import classify_images, image_logits
from kdcore.vision.spec import ImageSpec

__all__ = ["ImageSpec", "classify_images", "image_logits"]
