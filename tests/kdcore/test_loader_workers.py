"""DataLoader workers forked from kdflow's forkserver import nothing of their own: the server's
preload list covers what a streamed image item needs (decoding, the augmented crop, the eval view),
so no worker pays torchvision's import (2.7 s of CPU each, bench/loader_workers.py)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

from images import write_image_folder

from kdcore.config import AugmentConfig, DataConfig
from kdcore.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]

# A process that has imported what the forkserver imports, as a forked worker has, unpickles a
# streamed dataset (as a worker receives it) and reads items of every kind; it prints the modules it
# imported on the way.
WORKER = """
import importlib, json, pickle, sys
from kdcore.train.batches import FORKSERVER_PRELOAD
for name in FORKSERVER_PRELOAD:
    importlib.import_module(name)
before = set(sys.modules)
with open(sys.argv[1], "rb") as f:
    dataset = pickle.load(f)
batch = dataset.__getitems__([0, (1, 3), (2, 5)])  # the eval view, two augmented views
print(json.dumps({"new": sorted(set(sys.modules) - before), "shape": list(batch["x"].shape)}))
"""


def test_a_worker_of_the_forkserver_reads_streamed_images_without_importing(tmp_path):
    folder = write_image_folder(tmp_path / "imgs", per_class=4)
    cfg = DataConfig(
        name="imagefolder", root=str(folder), image_size=24, in_memory=False, num_workers=0, decoded_store=False
    )
    cfg.augment = AugmentConfig(scale=(0.5, 1.0), flip=True)
    (tmp_path / "dataset.pkl").write_bytes(pickle.dumps(load_dataset(cfg).train.x.dataset))
    cmd = [sys.executable, "-c", WORKER, str(tmp_path / "dataset.pkl")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["shape"] == [3, 3, 24, 24]  # the items were really read: three 24-px RGB views
    # plain pickle rebuilds the dataset's mean/std tensors with torch.utils.serialization, which a worker,
    # handed its dataset through multiprocessing's own pickler, does not use
    new = [m for m in result["new"] if not m.startswith("torch.utils.serialization")]
    assert new == [], f"a forked worker would import these itself: {new}"
