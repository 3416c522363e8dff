"""Users' own models, losses and datasets, registered without editing kdflow.

Two ways in, both importing modules whose top level registers things in kdflow's registries
(``@MODELS.register("my_net")``, ``@LOSSES.register("my_loss")``, ``@DATASETS.register("my_data")``):

* ``imports: [my_pkg.kd_plugins]`` in the config: imported whenever a config is validated, so
  the CLI, the Prefect flow, its tasks and a deployment's worker (which all re-validate the config
  they are handed) register the same names. A module that does not import fails the config with
  its name and the ImportError.
* an installed distribution that declares an entry point in the ``kdflow.plugins`` group
  (``[project.entry-points."kdflow.plugins"] my_pkg = "my_pkg.kd_plugins"``): loaded once, the
  first time a registry is asked for a name it does not hold (or by :func:`load_entry_points`).
  An entry point that names a callable (``"my_pkg.kd_plugins:register"``) is called with no
  arguments after loading.

Modules are looked up on ``sys.path``; the current working directory is appended to it (after the
installed packages) so a plugin file beside the config works with the ``kdflow`` command as it
does with ``python -m``.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from importlib import metadata

from kdcore.errors import ConfigError

ENTRY_POINT_GROUP = "kdflow.plugins"

_LOCK = threading.RLock()
_imported: set[str] = set()
_entry_points_loaded = False
entry_point_errors: dict[str, str] = {}  # entry point name -> why it did not load


def _with_cwd_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def import_module(name: str, what: str = "plugin module"):
    """Import ``name`` or raise a ConfigError naming it and the ImportError behind."""
    if not isinstance(name, str) or not name.strip() or any(not part.isidentifier() for part in name.split(".")):
        raise ConfigError(f"{what} {name!r} is not a dotted module name (like my_pkg.kd_plugins)")
    _with_cwd_on_path()
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"{what} {name!r} cannot be imported ({type(exc).__name__}: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised while importing
        raise ConfigError(f"{what} {name!r} failed while importing ({type(exc).__name__}: {exc})") from None


def import_plugins(modules: list[str]) -> list[str]:
    """Import every module of a config's ``imports`` (each once per process); returns them."""
    with _LOCK:
        for name in modules:
            if name not in _imported:
                import_module(name)
                _imported.add(name)
    return list(modules)


def load_entry_points(force: bool = False) -> dict[str, str]:
    """Load every ``kdflow.plugins`` entry point once per process. A plugin that fails to load is
    remembered in ``entry_point_errors`` (returned) and named when a lookup then misses, rather
    than breaking every other name."""
    global _entry_points_loaded
    with _LOCK:
        if _entry_points_loaded and not force:
            return dict(entry_point_errors)
        _entry_points_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
                if callable(obj):
                    obj()
            except Exception as exc:  # noqa: BLE001 - a broken third-party plugin must not break kdflow
                entry_point_errors[ep.name] = f"{ep.value}: {type(exc).__name__}: {exc}"
        return dict(entry_point_errors)
