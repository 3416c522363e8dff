"""glibc's heap kept between steps (kdcore/train/allocator.py): the thresholds take effect (a worker
thread's freed tensors are not faulted in again), the user's own malloc settings win, and the
weights a step trains do not change. The speed it buys is bench/allocator.py's (never asserted here).

Each case runs in a fresh interpreter: malloc's parameters are process-wide and set once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kdcore.train import allocator

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")

# A worker thread (as a Prefect task) allocates and frees 254 MB of touched tensors per "step";
# then a small CNN trains a few steps there and the weights' hash is printed.
CHILD = """
import hashlib, json, resource, threading
import torch
from kdcore.train.allocator import keep_heap
out = {"state": keep_heap()}

def work():
    torch.set_num_threads(1)
    for step in range(12):
        if step == 2:  # the first steps settle the heap; count from the third
            out["faults0"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensors = [torch.ones(1_500_000 + 100_000 * k) for k in range(24)]  # 6-15 MB each, 500 MB
        del tensors
    out["faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - out.pop("faults0")
    torch.manual_seed(0)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    for i in range(0, 256, 32):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
        opt.zero_grad(); loss.backward(); opt.step()
    out["weights"] = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()

t = threading.Thread(target=work)
t.start(); t.join()
print(json.dumps(out))
"""


def _run(code: str, *argv: str, **env: str) -> dict:
    """``code`` in a fresh interpreter without the caller's malloc settings; its last line as JSON."""
    ours = ("GLIBC_TUNABLES", allocator.ENV)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ours}
    clean.update(env, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", code, *argv]
    proc = subprocess.run(cmd, env=clean, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _child(**env: str) -> dict:
    return _run(CHILD, **env)


def test_kept_heap_stops_the_page_faults_and_trains_the_same_weights():
    system = _child(KDFLOW_ALLOCATOR="system")
    kept = _child()
    assert system["state"] == "system: KDFLOW_ALLOCATOR=system"
    assert kept["state"] == "kept"
    # 10 steps of 254 MB: glibc's defaults hand much of it back and fault it in again every step
    # (47,269 faults in all here), the kept heap reuses it (1,271)
    assert system["faults"] > 20_000, system
    assert kept["faults"] < system["faults"] / 10, (kept, system)
    assert kept["weights"] == system["weights"]


# keep_heap's outcome alone, from the module's file (it imports no torch; kdcore.train's __init__ would)
STATE = f"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("allocator", {str(Path(allocator.__file__))!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps({{"state": module.keep_heap()}}))
"""


def test_the_users_own_malloc_settings_win():
    assert _run(STATE)["state"] == "kept"
    assert _run(STATE, MALLOC_TRIM_THRESHOLD_="1000000")["state"] == "system: MALLOC_TRIM_THRESHOLD_ is set"
    assert _run(STATE, GLIBC_TUNABLES="glibc.malloc.mmap_threshold=1000000")["state"] == (
        "system: GLIBC_TUNABLES sets glibc.malloc"
    )


def test_every_stage_keeps_the_heap(monkeypatch):
    from kdcore.stages import env as stage_env

    calls = []
    monkeypatch.setattr(stage_env, "keep_heap", lambda: calls.append(1) or "kept")
    stage_env.pin_compute(None, deterministic=False)
    assert calls == [1]


# A worker thread frees 500 MB into the kept heap; then a DataLoader is made: with workers forked
# from this process, the free heap goes back to the kernel first (the parent's RSS drops), so the
# workers do not start on it; without workers it stays.
HEAP = """
import json, sys, threading
import torch
from kdcore.train.allocator import keep_heap

def rss_mb():  # anonymous pages only: the kernel may drop mapped library pages under load
    line = next(l for l in open("/proc/self/status") if l.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024

def free_in_a_thread():  # about 500 MB into a worker thread's heap, freed (kept where the heap is)
    def work():
        for _ in range(3):
            tensors = [torch.ones(1_500_000 + 100_000 * k) for k in range(24)]
            del tensors
    t = threading.Thread(target=work)
    t.start(); t.join()

out = {"state": keep_heap()}
"""

LOADER_CHILD = (
    HEAP
    + """
from kdcore.train import batches
real_trim = batches.trim_heap
def trim_heap():
    out["trimmed"] = real_trim()
    return out["trimmed"]
batches.trim_heap = trim_heap
free_in_a_thread()
out["before"] = rss_mb()
loader = batches.make_loader(list(range(8)), [[0, 1], [2, 3]], int(sys.argv[1]), torch.device("cpu"))
out["after"] = rss_mb()
out["batches"] = [b.tolist() for b in loader]
print(json.dumps(out))
"""
)


def _loader_child(workers: int, **env: str) -> dict:
    return _run(LOADER_CHILD, str(workers), **env)


def test_forked_loader_workers_start_after_the_kept_heap_went_back():
    forked = _loader_child(1)
    assert forked["state"] == "kept"
    assert forked["batches"] == [[0, 1], [2, 3]]
    assert forked["trimmed"] is True
    assert forked["before"] - forked["after"] > 200, forked  # the ~500 MB of free heap handed back
    alone = _loader_child(0)  # no workers: nothing forks, the heap stays for the next steps
    assert "trimmed" not in alone
    assert alone["before"] - alone["after"] < 50, alone


def test_trim_heap_does_nothing_where_the_heap_is_not_kept():
    system = _loader_child(1, KDFLOW_ALLOCATOR="system")
    assert system["state"] == "system: KDFLOW_ALLOCATOR=system"
    assert system["trimmed"] is False, system  # asked, and malloc_trim was not called
    assert system["batches"] == [[0, 1], [2, 3]]


# The same with a persistent loader (a stage's streaming source): made before the steps, its workers
# fork at the first pass, after the steps freed their memory; the heap goes back then.
PERSISTENT_CHILD = (
    HEAP
    + """
from kdcore.train.batches import LoaderBatches

class Rows:
    def __getitem__(self, i):
        return {"idx": torch.tensor(i), "x": torch.full((2,), float(i)), "y": torch.tensor(i % 2)}

source = LoaderBatches(Rows(), 8, torch.device("cpu"), num_workers=1)
free_in_a_thread()
out["before"] = rss_mb()
out["idx"] = [b.idx.tolist() for b in source.epoch(0, 0, 4)]
out["after"] = rss_mb()
out["second"] = [b.idx.tolist() for b in source.epoch(0, 1, 4)]
print(json.dumps(out))
"""
)


def test_a_persistent_loader_hands_the_heap_back_when_its_workers_start():
    out = _run(PERSISTENT_CHILD)
    assert out["state"] == "kept"
    assert sorted(sum(out["idx"], [])) == list(range(8)) and sorted(sum(out["second"], [])) == list(range(8))
    assert out["before"] - out["after"] > 200, out
