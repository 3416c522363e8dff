"""Does a stage train slower in a worker thread (where Prefect runs tasks) than in the main thread?

kdcore's teacher stage function (configs/full_fashion.yaml: resnet14, batch 128, 2 threads; a
subset of the training images, one epoch) runs alternately in the main thread and in a fresh
``ThreadPoolExecutor`` worker (the main thread's OpenMP pool handed back first, as the flow does),
the order swapped every round. No Prefect, no MLflow. Prints each round's training images/s and the
worker / main ratios.

Usage: .venv/bin/python bench/stage_thread.py [--rounds 6] [--limit-train 8000] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "full_fashion.yaml"))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--limit-train", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from kdcore.config import load_config
    from kdcore.data import load_dataset
    from kdcore.stages import StageEnv, train_teacher
    from kdcore.train.openmp import release_thread_pool

    sets = [f"data.limit_train={args.limit_train}", "teacher.train.max_epochs=1", f"trainer.num_threads={args.threads}"]
    cfg = load_config(args.config, sets)
    torch.set_num_threads(args.threads)
    data = load_dataset(cfg.data)
    work = Path(tempfile.mkdtemp(prefix="kdflow-stage-thread-"))

    def epoch_rate(where: str, k: int) -> float:
        res = train_teacher(StageEnv(cfg, data, work / f"{where}-{k}"))  # a fresh folder: nothing to resume
        return res.fit.history[0]["samples_per_s"]

    rates: dict[str, list[float]] = {"main": [], "worker": []}
    for k in range(args.rounds):
        for where in ("main", "worker") if k % 2 == 0 else ("worker", "main"):
            if where == "main":
                rates[where].append(epoch_rate(where, k))
            else:
                release_thread_pool()  # as the flow's thread does before it waits for a stage
                with ThreadPoolExecutor(1) as pool:
                    rates[where].append(pool.submit(epoch_rate, where, k).result())
        print(f"round {k + 1}: main {rates['main'][-1]:.0f}, worker {rates['worker'][-1]:.0f} images/s", flush=True)
    main_r, worker_r = statistics.median(rates["main"]), statistics.median(rates["worker"])
    ratios = ", ".join(f"{w / m:.3f}" for m, w in zip(rates["main"], rates["worker"]))
    print(
        f"teacher stage, {args.limit_train} images, {args.threads} threads, {args.rounds} rounds: "
        f"main thread {main_r:.0f} images/s, worker thread {worker_r:.0f} (median); "
        f"worker / main {worker_r / main_r:.3f} (per round {ratios})"
    )


if __name__ == "__main__":
    main()
