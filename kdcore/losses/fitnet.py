"""``fitnet``: hint regression of student features onto teacher features through connectors."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.nn import functional as F

from kdcore.connectors import check_connector_kind, pair_connector
from kdcore.errors import KdflowError
from kdcore.losses.inputs import KDInputs
from kdcore.losses.pairs import pair_features, pair_shapes, parse_pairs, student_paths, teacher_paths
from kdcore.losses.registry import LOSSES, DistillLoss, Shapes


@LOSSES.register("fitnet")
class FitNetLoss(DistillLoss):
    """Mean over pairs of MSE(connector(student feature), teacher feature).

    ``connector`` is the default kind for every pair; a pair may name its own
    (``{"student": "block2", "teacher": "layer3", "connector": "conv"}``).
    """

    name = "fitnet"
    needs_teacher = True

    def __init__(self, *, pairs: list[dict[str, str]], connector: str = "auto") -> None:
        super().__init__()
        self.pairs = parse_pairs("fitnet", pairs, allow_connector=True)
        self.connector = check_connector_kind("fitnet", connector)
        for pair in self.pairs:
            if pair.connector is not None:
                check_connector_kind("fitnet", pair.connector)
        self.student_paths = student_paths(self.pairs)
        self.teacher_paths = teacher_paths(self.pairs)
        self.connectors: Optional[nn.ModuleList] = None

    def build(self, student_shapes: Shapes, teacher_shapes: Shapes) -> None:
        """One connector per pair, from the probed per-sample feature shapes."""
        connectors = []
        for pair in self.pairs:
            s_shape, t_shape = pair_shapes("fitnet", pair, student_shapes, teacher_shapes)
            kind = pair.connector or self.connector
            connectors.append(pair_connector("fitnet", str(pair), s_shape, t_shape, kind))
        self.connectors = nn.ModuleList(connectors)

    def forward(self, inp: KDInputs) -> dict[str, Tensor]:
        if self.connectors is None:
            raise KdflowError("loss 'fitnet' was used before build(student_shapes, teacher_shapes)")
        total = None
        for pair, connector in zip(self.pairs, self.connectors):
            s, target = pair_features("fitnet", pair, inp)
            mapped = connector(s)
            term = F.mse_loss(mapped, target.to(mapped.dtype))
            total = term if total is None else total + term
        assert total is not None  # parse_pairs: at least one pair
        return {"fitnet": total / len(self.pairs)}
