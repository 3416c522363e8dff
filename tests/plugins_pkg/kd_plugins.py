"""The user's plugin module: importing it registers a loss and a dataset with kdflow."""

from __future__ import annotations

import numpy as np
from torch import Tensor
from torch.nn import functional as F

from kdcore.data import DATASETS, RawData
from kdcore.losses import LOSSES, DistillLoss, KDInputs


@LOSSES.register("tempered_mse")
class TemperedMSELoss(DistillLoss):
    """Mean squared difference of temperature-scaled student and teacher logits."""

    name = "tempered_mse"
    needs_teacher = True
    takes_temperature = True  # gets distill.temperature unless the config sets its own

    def __init__(self, *, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = float(temperature)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        t = self.temperature
        return {"tempered_mse": F.mse_loss(inp.student_logits / t, self.teacher_logits(inp).detach() / t)}


@DATASETS.register("stripes")
def load_stripes(cfg) -> RawData:
    """12x12 grey images of 3 classes: horizontal stripes, vertical stripes, a bright centre square,
    with random phase and noise (``data.options``: per_class, seed)."""
    per_class = int(cfg.options.get("per_class", 60))
    rng = np.random.default_rng(int(cfg.options.get("seed", 0)))
    yy, xx = np.mgrid[0:12, 0:12]
    images, labels = [], []
    for label in range(3):
        for _ in range(per_class):
            phase = rng.integers(0, 4)
            if label == 0:
                img = ((yy + phase) % 4 < 2) * 200.0
            elif label == 1:
                img = ((xx + phase) % 4 < 2) * 200.0
            else:
                img = ((abs(yy - 6 + phase % 2) < 3) & (abs(xx - 6 + phase // 2) < 3)) * 200.0
            img = np.clip(img + rng.normal(0, 30, img.shape), 0, 255)
            images.append(img[None].astype(np.uint8))
            labels.append(label)
    return RawData(
        train_x=np.stack(images),
        train_y=np.array(labels),
        class_names=["rows", "columns", "square"],
        source="plugins_pkg.kd_plugins (generated)",
    )
