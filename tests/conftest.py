"""Shared fixtures. Prefect's temporary server starts once per test session."""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# a `kdflow` started by a test (in process or as a subprocess) uses Prefect's temporary server, not the local
# server that outlives it; tests/test_local_server.py opts in with KDFLOW_PREFECT=local
os.environ.setdefault("KDFLOW_PREFECT", "ephemeral")
# the test session's temporary Prefect server keeps idle connections longer than the client does
# (flows/prefect_server.py KEEPALIVE_SECONDS says why)
os.environ.setdefault("UVICORN_TIMEOUT_KEEP_ALIVE", "75")
# what a test writes under KDFLOW_HOME without choosing one (e.g. decoded image stores) goes to a
# temporary folder of this test process, not to ./.kdflow in the checkout
if "KDFLOW_HOME" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["KDFLOW_HOME"] = tempfile.mkdtemp(prefix="kdflow-tests-home-")
    atexit.register(shutil.rmtree, os.environ["KDFLOW_HOME"], True)

from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402

TINY = {
    "name": "tiny",
    "data": {"name": "digits"},
    "teacher": {"arch": "cnn_small", "train": {"max_epochs": 2, "batch_size": 64}},
    "student": {"arch": "cnn_tiny"},
    "distill": {"train": {"max_epochs": 2, "batch_size": 64}},
    "evaluate": {"min_run_time": 0.01, "throughput_batch": 32},
    "register": {"teacher_name": "tiny-teacher", "student_name": "tiny-student"},
}


# The slowest modules first, longest first (seconds per module of a whole run, 2026-12-04, in the
# comments): under `pytest -n 3 --dist loadfile` (the README's test command) a long module that
# started last would leave the other worker idle at the end. pytest_configure below turns off
# xdist's own reordering (by the number of tests in a module), which would undo this order.
SLOW_FIRST = (
    "test_servers",  # 129 \
    "test_workers",  # 96   > one work unit under xdist (REAL_SERVER_MODULES below): 270
    "test_pools",  # 46    /
    "test_engines",  # 160 (its sweeps fixture: most of it)
    "test_reproduce",  # 133
    "test_integration_servers",  # 123
    "test_local_server",  # 122
    "test_determinism",  # 73
    "test_progress",  # 66
    "test_tooling",  # 54
    "test_reliability",  # 50
    "test_pipeline_defects",  # 40
    "test_sequence_pipeline",  # 38
    "test_own_models",  # 26
    "test_pipeline",  # 22
    "test_ddp",  # 22
    "test_allocator",  # 19
    "test_retrain",  # 18
    "test_streaming",  # 18
    "test_tracking_door",  # 15
    "test_cache",  # 12
    "test_stage_spec",  # 12
    "test_sweep",  # 11
    "test_schedule",  # 11
    "test_verdict",  # 8
    "test_methods_configs",  # 8
    "test_tracking",  # 7
    "test_bad_inputs",  # 6
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        module = Path(str(item.fspath)).stem
        return SLOW_FIRST.index(module) if module in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: the order inside a module is kept


# The modules that use the session's real Prefect and MLflow servers (the real_servers fixture below):
# under xdist they go to one worker as one unit, so the servers start once per session rather than
# once on each worker that happens to draw one of them. _split_scope is xdist's own (private) way of
# naming a test's unit (pytest-xdist 3.5-3.8); were it renamed, the modules would merely go back to a
# unit each, the suite as correct and about a minute slower.
REAL_SERVER_MODULES = ("test_servers", "test_workers", "test_pools")


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class RealServersTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "real-servers" if Path(path).stem in REAL_SERVER_MODULES else path

    return RealServersTogether(config, log)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist: keep SLOW_FIRST's order of modules
        config.option.loadscopereorder = False
    if os.environ.get("PYTEST_XDIST_WORKER"):  # xdist workers on two cores: one torch thread each
        # and one for the kdflow processes a test starts (a config's trainer.num_threads still pins its
        # own count): two of them at two threads each beside the other workers oversubscribe the cores
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_process_state():
    """Each test leaves os.environ, MLflow's process-wide tracking URI and torch's thread count as it
    found them."""
    import mlflow
    import torch

    env = dict(os.environ)
    uri = mlflow.get_tracking_uri()
    threads = torch.get_num_threads()  # a stage sets it from trainer.num_threads
    yield
    torch.set_num_threads(threads)
    mlflow.set_tracking_uri(uri)  # first: it also writes MLFLOW_TRACKING_URI into os.environ
    os.environ.clear()
    os.environ.update(env)


@pytest.fixture(scope="session")
def prefect_server():
    """Prefect's test server, for this session's flows and for the `kdflow` processes its tests start
    (PREFECT_API_URL in the environment they inherit): each would otherwise start a temporary server
    of its own, 10-20 s of the two cores. Its database starts as a copy of a migrated one
    (tests/migrated_prefect_db.py)."""
    from prefect.settings import PREFECT_API_URL

    from migrated_prefect_db import seeded_harness

    with seeded_harness(startup_timeout=120):
        old = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = old


_REAL_SERVERS: dict = {}  # the real_servers fixture's servers while they run
_real_servers_stopped = False  # by pytest_runtest_teardown, after the last of REAL_SERVER_MODULES' tests


def _stop_real_servers() -> None:
    for name in ("mlflow", "prefect"):
        server = _REAL_SERVERS.pop(name, None)
        if server is not None:
            server.stop(timeout=3)  # then SIGKILL: Prefect's server took ~10 s to end on SIGTERM


@pytest.fixture(scope="session")
def real_servers(tmp_path_factory):
    """A real Prefect server and a real MLflow tracking server on 127.0.0.1, for REAL_SERVER_MODULES:
    started for the first of their tests, stopped after the last (pytest_runtest_teardown below), so
    they do not idle through the rest of the session."""
    from servers import mlflow_server, prefect_server

    root = tmp_path_factory.mktemp("servers")
    prefect, mlflow = prefect_server(root / "prefect").launch(), mlflow_server(root / "mlflow").launch()
    _REAL_SERVERS.update(prefect=prefect, mlflow=mlflow)
    try:
        prefect.wait()
        mlflow.wait()
        yield {"prefect": prefect, "mlflow": mlflow, "root": root}
    finally:
        _stop_real_servers()


def _module(item) -> str:
    return Path(str(item.fspath)).stem if item is not None else ""


def pytest_runtest_setup(item):
    if "real_servers" in getattr(item, "fixturenames", ()) and _real_servers_stopped:
        pytest.fail(f"{_module(item)} uses the real servers: add it to REAL_SERVER_MODULES in tests/conftest.py")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the last test of REAL_SERVER_MODULES (they run one after another: one xdist unit, and first
    in SLOW_FIRST), stop the real servers. xdist tells a worker its next test before this one ends."""
    global _real_servers_stopped
    result = yield
    if _REAL_SERVERS and _module(item) in REAL_SERVER_MODULES and _module(nextitem) not in REAL_SERVER_MODULES:
        _stop_real_servers()
        _real_servers_stopped = True
    return result


@contextlib.contextmanager
def kdflow_home(home: Path) -> Iterator[Path]:
    """KDFLOW_HOME set to ``home`` and MLflow in its SQLite store (no MLFLOW_TRACKING_URI) inside,
    the environment put back after: for module-scoped fixtures, which monkeypatch cannot serve."""
    old = {k: os.environ.get(k) for k in ("KDFLOW_HOME", "MLFLOW_TRACKING_URI")}
    os.environ["KDFLOW_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield home
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture()
def kdhome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("KDFLOW_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


def tiny_config(**sections):
    import copy

    from kdcore.config import config_from_dict

    raw = copy.deepcopy(TINY)
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return config_from_dict(raw)
