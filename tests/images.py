"""Small generated image datasets for the streaming tests: colour-coded classes, PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_image_folder(root: Path, classes: int = 3, per_class: int = 30, size: int = 32, seed: int = 0) -> Path:
    """``root/c<k>/<i>.png``: noise whose class shows in one darker channel and a bright square."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            a[..., c % 3] //= 4
            q = size // 4
            a[q * (c % 3) : q * (c % 3) + q, q : 2 * q] = 255
            Image.fromarray(a).save(folder / f"{i}.png")
    return root
