"""Serve kdflow's deployments (deployments/prefect.yaml, schedules included) from one process:
``python -m deployments.serve [pipeline sweep retrain]`` (the same as ``kdflow serve``)."""

from __future__ import annotations

import sys

from flows.deploy import serve


def main(argv: list[str] | None = None) -> None:
    serve(list(argv if argv is not None else sys.argv[1:]) or None)


if __name__ == "__main__":
    main()
