"""The comparison table across models (pandas), apart from the metrics: building it needs no
torchmetrics."""

from __future__ import annotations

import pandas as pd


def comparison_table(rows: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per model (index ``model``), one column per metric; missing metrics are NaN."""
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "model"
    return table
