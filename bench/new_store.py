"""What a new kdflow home's MLflow store costs: MLflow's own migrations against a copy of the
migrated empty store (tasks/sqlite_store.py), side by side in one process, CPU seconds.

    .venv/bin/python bench/new_store.py [--repeats 5]

Each repeat makes a store both ways in fresh folders (the template itself is made once, first, in a
temporary cache, and its cost printed apart); the medians are printed."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kdflow-new-store-"))
    os.environ["XDG_CACHE_HOME"] = str(tmp / "cache")

    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from tasks import sqlite_store

    t = time.process_time()
    template = sqlite_store._template()
    made = time.process_time() - t
    assert template is not None, "the template could not be made"

    def store(home: Path, seed: bool) -> float:
        home.mkdir(parents=True)
        db = home / "mlflow.db"
        start = time.process_time()
        if seed:
            assert sqlite_store.seed_new_store(db)
        SqlAlchemyStore(f"sqlite:///{db}", (home / "mlartifacts").as_uri())
        return time.process_time() - start

    migrated = [store(tmp / f"m{i}", seed=False) for i in range(args.repeats)]
    copied = [store(tmp / f"c{i}", seed=True) for i in range(args.repeats)]
    m, c = statistics.median(migrated), statistics.median(copied)
    print(f"template made once: {made:.2f} s CPU")
    print(f"new store, MLflow's migrations: {m:.3f} s CPU (median of {args.repeats})")
    print(f"new store, copy of the template: {c:.3f} s CPU (median of {args.repeats})")
    print(f"saved per new home: {m - c:.2f} s ({m / c:.0f}x)")


if __name__ == "__main__":
    main()
