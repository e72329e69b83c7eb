"""The one line a failed run or script prints: the problem and, where we know it, the fix, for facetrain's own
errors, Hydra's and OmegaConf's config errors (the key, the value, the preset that set it), missing plugins and
launcher commands, and a rank that stopped answering."""
from __future__ import annotations

import re
import sys
from typing import Optional

from hydra.core.config_store import ConfigStore
from hydra.errors import MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from facetrain.config import CONFIG_DIR
from facetrain.config.plugins import missing_launcher_command, plugin_missing
from facetrain.errors import FacetrainError
from facetrain.parallel.groups import is_collective_failure

TRACEBACK_HINT = "set HYDRA_FULL_ERROR=1 for the full traceback"


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is bad input (exit code 2: a facetrain error, a config error), not a crash."""
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
