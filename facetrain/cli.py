"""Command-line wrapper: distributed start-up before Hydra, and one-line errors after it."""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from facetrain.config import register_schemas
from facetrain.config.plugins import store_plugin_configs
from facetrain.errors import FacetrainError
from facetrain.parallel.groups import cleanup, init_distributed
from facetrain.runs.failure import describe_error, is_user_error
from facetrain.runs.preemption import PREEMPTED_EXIT_CODE, Preempted
from facetrain.runs.run_dir import agree_on_run_stamp, register_resolvers
from facetrain.sweeps.submitit_jobs import in_submitit_job, leave

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
# submitit's signal for "preempted or near the time limit": one of facetrain's stop signals (runs/preemption.py),
# so a submitit job saves a checkpoint before submitit re-queues it (sweeps/submitit_jobs.py)
SUBMITIT_SIGNAL_ENV, SUBMITIT_SIGNAL = "SUBMITIT_PREEMPT_SIGNAL", "USR1"
PATH_KEYS = ("resume", "init.backbone")  # keys whose value names a run directory


_deferred: list[BaseException] = []


class SweepStopped(BaseException):
    """A sweep job stopped by a signal (its checkpoint saved): raised past Hydra's launcher, which would start
    the next job, to :func:`run_cli`. Run again under the same ``sweep.name``, each job continues from its
    checkpoints."""

    def __init__(self, preempted: Preempted, sweep_name: str) -> None:
        super().__init__(f"{str(preempted).split(';')[0]}; continue the sweep with the same command and "
                         f"sweep.name={sweep_name} (each job continues from its checkpoints)")


def prepare_hydra() -> None:
    """What Hydra needs before it composes facetrain's configs: the schemas, the plugins' configs as facetrain
    sets them (launchers, sweepers) and the run-directory resolvers."""
    register_schemas()
    store_plugin_configs()
    register_resolvers()


def compose_train_config(overrides: list[str], config_dir: Path) -> DictConfig:
    """The training config ``train.py`` would get from ``config_dir`` with ``overrides`` (Hydra's
    compose API: for tools that build a trainer outside a Hydra run)."""
    prepare_hydra()
    with initialize_config_dir(config_dir=str(config_dir.resolve()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def defer_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Hydra task so its exception reaches :func:`run_cli` without Hydra's extra report. A sweep job's
    exception goes to Hydra, which records it as the job's result, runs the other jobs, then raises it."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised by run_cli
            if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
                if not isinstance(exc, Preempted):
                    raise
                if in_submitit_job():
                    leave(exc)  # re-queued through submitit, or ended
                raise SweepStopped(exc, Path(HydraConfig.get().sweep.dir).name) from exc
            _deferred.append(exc)
            return None

    return wrapper


def quote_paths(argv: list[str]) -> list[str]:
    """``argv`` with each override of :data:`PATH_KEYS` that names an existing file or directory quoted for Hydra:
    a sweep job's directory is named after its overrides (``mbf_arcface_synthetic_loss=arcface,seed=1``), and
    Hydra's override grammar would read its ``=`` and ``,`` as syntax."""
    quoted = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in PATH_KEYS and "'" not in value and not value.startswith('"') and os.path.exists(value):
            arg = f"{key}='{value}'"
        quoted.append(arg)
    return quoted


def run_cli(hydra_main: Callable[[], Any]) -> None:
    """Run a ``@hydra.main`` function; on failure print one line naming problem and fix, exit non-zero.

    Exit codes: 0 done, 1 crash, 2 bad input or a diverged run (NaN/Inf), 75 stopped by
    SIGTERM/SIGUSR1 with a checkpoint saved (run again with resume=auto), 130 Ctrl-C.
    """
    wants_traceback = os.environ.get(FULL_ERROR_ENV) == "1"
    os.environ[FULL_ERROR_ENV] = "1"  # let exceptions reach us instead of Hydra's multi-line report
    os.environ["OC_CAUSE"] = "1"  # keep the original exception behind OmegaConf's wrapper
    os.environ.setdefault(SUBMITIT_SIGNAL_ENV, SUBMITIT_SIGNAL)  # inherited by submitit's jobs
    prepare_hydra()
    sys.argv[1:] = quote_paths(sys.argv[1:])
    try:
        init_distributed()
        agree_on_run_stamp()
        hydra_main()
        if _deferred:
            raise _deferred.pop()
    except KeyboardInterrupt:
        print("facetrain: interrupted", file=sys.stderr)
        sys.exit(130)
    except (Preempted, SweepStopped) as exc:
        print(f"facetrain: {exc}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one readable line
        if wants_traceback:
            raise
        print(f"facetrain: error: {describe_error(exc)}", file=sys.stderr)
        sys.exit(2 if is_user_error(exc) else 1)
    finally:
        cleanup()


class ScriptParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors (a missing argument, a bad flag value) are one line,
    ``<prog>: error: <problem>; run it with --help for its options``, exit code 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; run it with --help for its options\n")


def script_parser(prog: str, doc: Optional[str]) -> ScriptParser:
    """The argument parser of script ``prog``, described by the first paragraph of its docstring."""
    return ScriptParser(prog=prog, description=(doc or "").split("\n\n")[0].strip())


def run_script(prog: str, work: Callable[[], Optional[int]]) -> int:
    """A script's exit code: ``work()``'s (0 for None); a :class:`FacetrainError` is printed as
    ``<prog>: error: <problem>; <fix>`` and gives 2, Ctrl-C gives 130."""
    try:
        return work() or 0
    except FacetrainError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
