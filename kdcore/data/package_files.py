"""Data files shipped inside installed Python packages, located without importing the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kdcore.errors import DataError


def package_file(dataset: str, package: str, relative: str | Path) -> Path:
    """The path of ``relative`` inside the installed ``package``, or a DataError saying how to install it.

    The packages are installed without their dependencies (``pip install --no-deps PACKAGE``):
    only their data files are read, never their code.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"dataset {dataset} reads a file shipped with the {package} package, which is not "
            f"installed: pip install --no-deps {package}"
        )
    for base in spec.submodule_search_locations:
        path = Path(base) / relative
        if path.is_file():
            return path
    looked = ", ".join(str(Path(b) / relative) for b in spec.submodule_search_locations)
    raise DataError(
        f"dataset {dataset}: file {looked} is missing; reinstall it: pip install --no-deps --force-reinstall {package}"
    )
