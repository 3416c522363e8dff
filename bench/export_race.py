"""Why stages that train side by side in one process do not repeat bit for bit.

MLflow 3 logs a PyTorch model in the `pt2` format, through `torch.export`. This trains a small CNN
in the main thread (one intra-op thread, fixed data, no randomness after initialisation) twice
alone, then twice while a second thread keeps doing one of: a plain forward pass, `torch.export`,
a FLOP count. It prints a hash of the trained weights for each: equal hashes mean the training was
not disturbed. Seen on torch 2.x CPU (2026-12-01): only `export` changes the weights (and
differently each time) — so when the baseline logs its model while the teacher trains, the teacher
comes out different. `trainer.concurrent_stages: auto` runs the stages one after the other on the
CPU, where nothing overlaps.

Usage: .venv/bin/python bench/export_race.py
"""

from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kdcore.models import create_model  # noqa: E402


def train() -> str:
    torch.manual_seed(0)
    model = create_model("cnn_small", in_channels=1, num_classes=10)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(512, 1, 28, 28, generator=g), torch.randint(0, 10, (512,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for it in range(60):
        i = (it * 64) % 512
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:16]


def disturb(stop: threading.Event, what: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("cnn_tiny", in_channels=1, num_classes=10).eval()
    example = torch.randn(2, 1, 28, 28)
    while not stop.is_set():
        if what == "export":
            torch.export.export(model, (example,))
        elif what == "flops":
            with FlopCounterMode(display=False):
                model(example)
        else:
            with torch.no_grad():
                model(example)


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'alone':<8} {train()} {train()}")
    for what in ("forward", "export", "flops"):
        stop = threading.Event()
        other = threading.Thread(target=disturb, args=(stop, what))
        other.start()
        try:
            hashes = [train(), train()]
        finally:
            stop.set()
            other.join()
        print(f"{what:<8} {' '.join(hashes)}")


if __name__ == "__main__":
    main()
