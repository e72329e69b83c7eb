"""Command-line wrapper: distributed start-up before Hydra, and one-line errors after it."""
from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from facetrain.config import register_schemas
from facetrain.engine.distributed import cleanup, init_distributed, is_collective_failure
from facetrain.engine.plugins import missing_launcher_command, plugin_missing
from facetrain.engine.preemption import PREEMPTED_EXIT_CODE, Preempted
from facetrain.engine.run_dir import agree_on_run_stamp, register_resolvers
from facetrain.engine.submitit_jobs import in_submitit_job, leave
from facetrain.errors import FacetrainError

FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
# submitit's signal for "preempted or near the time limit": one of facetrain's stop signals (engine/preemption.py),
# so a submitit job saves a checkpoint before submitit re-queues it (engine/submitit_jobs.py)
SUBMITIT_SIGNAL_ENV, SUBMITIT_SIGNAL = "SUBMITIT_PREEMPT_SIGNAL", "USR1"
TRACEBACK_HINT = "set HYDRA_FULL_ERROR=1 for the full traceback"
PATH_KEYS = ("resume", "init.backbone")  # keys whose value names a run directory
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # the folder train.py composes from


_deferred: list[BaseException] = []


class SweepStopped(BaseException):
    """A sweep job stopped by a signal (its checkpoint saved): raised past Hydra's launcher, which would start
    the next job, to :func:`run_cli`. Run again under the same ``sweep.name``, each job continues from its
    checkpoints."""

    def __init__(self, preempted: Preempted, sweep_name: str) -> None:
        super().__init__(f"{str(preempted).split(';')[0]}; continue the sweep with the same command and "
                         f"sweep.name={sweep_name} (each job continues from its checkpoints)")


def compose_train_config(overrides: list[str], config_dir: Path) -> DictConfig:
    """The training config ``train.py`` would get from ``config_dir`` with ``overrides`` (Hydra's
    compose API: for tools that build a trainer outside a Hydra run)."""
    register_schemas()
    register_resolvers()
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
    register_schemas()
    register_resolvers()
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
        sys.exit(2 if _is_user_error(exc) else 1)
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


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(_root_cause(exc), (FacetrainError, OmegaConfBaseException, MissingConfigException))


def _root_cause(exc: BaseException) -> BaseException:
    """The most telling exception in the chain: our own or Hydra's missing config first, then the
    innermost OmegaConf error, else ``exc`` itself."""
    chain = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    found = [e for e in chain if isinstance(e, (FacetrainError, MissingConfigException))]
    if found:
        return found[-1]
    launcher = missing_launcher_command(chain)
    if launcher is not None:
        return launcher
    omegaconf = [e for e in chain if isinstance(e, OmegaConfBaseException)]
    keyed = [e for e in omegaconf if getattr(e, "full_key", None)]  # formatted with the real value and type
    return keyed[0] if keyed else omegaconf[-1] if omegaconf else chain[0]


def _full_key(exc: BaseException) -> str:
    """The dotted config key an OmegaConf error is about (outer wrappers know it best)."""
    while exc is not None:
        if getattr(exc, "full_key", None):
            return str(exc.full_key)
        exc = exc.__cause__ or exc.__context__
    return ""


def _given(exc: BaseException) -> str:
    """The value an OmegaConf validation error is about, as the user wrote it."""
    value = getattr(exc, "value", None)
    return "null" if value is None else str(value)


_SET_IN = re.compile(r"^In '([\w./-]+/[\w.-]+)': ")  # Hydra's composition errors name the file being merged


def _set_in(exc: BaseException) -> Optional[str]:
    """The config file of a group (``experiment/smoke``) whose merge raised ``exc``, if any (not train.yaml)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        if found := _SET_IN.match(str(exc)):
            return found.group(1)
        exc = exc.__cause__ or exc.__context__
    return None


def _chosen(group: str) -> Optional[str]:
    """The option of config ``group`` given on the command line (``dataset=imagefolder``), if any."""
    for arg in reversed(sys.argv[1:]):
        key, sep, value = arg.lstrip("+~").partition("=")
        if sep and key == group:
            return value
    return None


def _unknown_key(key: str, source: Optional[str]) -> str:
    """An unknown key typed by the user, or one set by a config file (a preset) for a group option that lacks it."""
    if source is None:
        return f"unknown config key '{key}'; check its spelling (python train.py --cfg job lists every key)"
    preset, group = "=".join(source.rsplit("/", 1)), key.split(".")[0]
    lacking = f"{group}={_chosen(group)}" if _chosen(group) else f"the {group} in use"
    return (f"config key '{key}' is set by {preset} (configs/{source}.yaml), but {lacking} has no such key; "
            f"use the {group} that {preset} is written for, or drop {preset}")


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def group_options(group: str) -> list[str]:
    """The configs of ``group``: its files in :data:`CONFIG_DIR` and those in Hydra's ConfigStore (Hydra names
    them for a single choice, ``logger=nope``, but not for a member of a list, ``logger=[tensorboard,nope]``)."""
    names = {path.stem for path in (CONFIG_DIR / group).glob("*.yaml")}
    try:
        names |= {name.removesuffix(".yaml") for name in ConfigStore.instance().list(group) if name.endswith(".yaml")}
    except OSError:  # no such group in the store
        pass
    return sorted(names)


def describe_error(exc: BaseException) -> str:
    """One line naming the problem and, where we know it, the fix."""
    cause = _root_cause(exc)
    if isinstance(cause, FacetrainError):
        return str(cause)
    if isinstance(cause, MissingConfigException):
        if (missing_plugin := plugin_missing(cause.missing_cfg_file or "")) is not None:
            return str(missing_plugin)
        group, _, choice = (cause.missing_cfg_file or "").rpartition("/")
        options = cause.options or (group_options(group) if group else [])
        if options:
            return f"unknown {group} '{choice}'; choose one of: {', '.join(sorted(options))}"
        return f"{_first_line(str(cause))}; check the name and the configs/ folder"
    if isinstance(cause, OmegaConfBaseException):
        key = _full_key(exc)
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            return _unknown_key(key, _set_in(exc))
        if isinstance(cause, MissingMandatoryValue):
            return f"{key} is not set; pass {key}=<value> on the command line"
        if isinstance(cause, ValidationError):
            return f"{key}={_given(cause)} is invalid: {_first_line(str(cause))}; give a value of the key's type"
        return f"{_first_line(str(cause))}" + (f" (key {key})" if key else "")
    if isinstance(exc, OmegaConfBaseException) or exc.__class__.__module__.startswith("hydra"):
        return _first_line(str(exc))
    if is_collective_failure(cause):
        reason = re.sub(r"^\[[^\]]*\]\s*", "", _first_line(str(cause))).split(". ")[0]  # drop gloo's source location
        return (f"lost contact with another rank ({reason}): a rank died or stopped answering; its log says why "
                "(trainer.dist_timeout_s bounds the wait). Fix that, then run again with resume=auto")
    return f"{exc.__class__.__name__}: {_first_line(str(exc))} ({TRACEBACK_HINT})"
