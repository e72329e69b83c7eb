"""Shared helpers: run the real CLI in a subprocess, on a tiny synthetic dataset cached per session."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

# OpenMP threads that spin while waiting for work lose their core to other processes on a shared
# machine: tiny CPU steps ran 3x slower with the default (active) policy. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke"]


STARTS_RUNS = {"run_cli", "train_in_process"}  # fixtures that train or start train.py: tens of seconds a test


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The suite runs on every core (pytest-xdist, ``--dist loadgroup``): the tests of a module that share one
    of its module-scoped fixtures (a training run, a sweep, a trained model) go to one worker, so the fixture
    is built once; the other tests spread over the workers one by one. The long tests are handed out first
    (those marked ``long``, then those groups and the tests that train or start train.py), so that the workers
    end together instead of one finishing a long test alone."""
    for item in items:
        definitions = getattr(item, "_fixtureinfo", None)
        shared = definitions is not None and any(
            chain[-1].scope == "module" and chain[-1].baseid.endswith(".py")
            for chain in definitions.name2fixturedefs.values())
        if shared:
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    items.sort(key=lambda item: 0 if item.get_closest_marker("long") else  # stable: each part keeps its order
               1 if item.get_closest_marker("xdist_group") or STARTS_RUNS & set(item.fixturenames) else 2)


@pytest.fixture(autouse=True)
def fresh_facetrain_logger():
    """Undo what an in-process ``facetrain.train.run`` did to the ``facetrain`` logger (its own handlers,
    no propagation), so later tests' ``caplog`` sees its records again."""
    yield
    logger = logging.getLogger("facetrain")
    for handler in logger.handlers:
        handler.close()
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: fastest, and immune to a busy machine (two threads
    on a shared 2-core machine made them several times slower)."""
    import torch  # here, not at the top: OMP_WAIT_POLICY must be set before torch is first imported

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("facetrain-cache")


@pytest.fixture(scope="session", autouse=True)
def session_cache(cache_dir: Path):
    """What facetrain caches (synthetic data, image checks) goes to the session's folder, not the user's."""
    previous = os.environ.get("FACETRAIN_CACHE")
    os.environ["FACETRAIN_CACHE"] = str(cache_dir)
    yield
    if previous is None:
        os.environ.pop("FACETRAIN_CACHE", None)
    else:
        os.environ["FACETRAIN_CACHE"] = previous


@pytest.fixture
def run_cli(cache_dir: Path, tmp_path: Path):
    """``run_cli(*args, launcher=None)`` runs ``train.py`` with ``output_root`` in ``tmp_path``."""

    def run(*args: str, launcher: list[str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "FACETRAIN_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}
        env.pop("HYDRA_FULL_ERROR", None)
        command = (launcher or [sys.executable]) + [str(REPO / "train.py"), f"output_root={tmp_path / 'outputs'}", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def train_in_process(cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``train_in_process(*overrides, run_dir=None) -> run_dir``: what ``python train.py *overrides`` trains
    (in ``run_dir``, or where Hydra would put it),
    through the same ``facetrain.train.run``, in this process: the config composed as Hydra composes it (its
    ``hydra`` node set as the running app's), without a new interpreter's ~9 s of imports and start-up.
    Hydra's own work (``.hydra/`` files, sweeps, error handling) needs :func:`run_cli`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from facetrain.cli import prepare_hydra
    from facetrain.train import run

    prepare_hydra()
    monkeypatch.setenv("FACETRAIN_CACHE", str(cache_dir))

    def train(*overrides: str, run_dir: Path | None = None) -> Path:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"output_root={tmp_path / 'outputs'}", *overrides],
                          return_hydra_config=True)
        run_dir = run_dir or Path(cfg.hydra.run.dir)  # as Hydra picks it (resume=<dir>, resume=auto, a new stamp)
        cfg.hydra.runtime.output_dir = str(run_dir)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        run(cfg)
        return run_dir

    return train


def only_run_dir(output_root: Path) -> Path:
    runs = [p for p in output_root.glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]
