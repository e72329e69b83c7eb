"""Hydra's optional plugins as facetrain configures them, the one line naming the ``pip install`` that brings
a missing plugin or tracker, and the one line for a launcher whose external commands this machine lacks.

Each plugin stores its own config in Hydra's ConfigStore when Hydra discovers it; :func:`store_plugin_configs`
runs that discovery first, then stores facetrain's version over it under the same name (the plugin's schema,
so its keys keep their types, with facetrain's defaults): ``hydra/launcher=submitit_slurm`` runs one process
per GPU (:mod:`facetrain.sweeps.submitit_jobs`), ``hydra/sweeper=optuna`` maximises the jobs' accuracy.
"""
from __future__ import annotations

import importlib
import shutil
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from omegaconf import OmegaConf

from facetrain.errors import ConfigError


@dataclass(frozen=True)
class PluginConfig:
    module: str  # the plugin's config module
    schema: str  # its config dataclass
    extra: str  # the extra of pyproject.toml that installs the plugin
    defaults: dict[str, Any]  # facetrain's values over the plugin's


ONE_PROCESS_PER_GPU = "${facetrain_tasks_per_node:${.gpus_per_node}}"
PLUGIN_CONFIGS = {
    "hydra/launcher/submitit_local": PluginConfig(
        "hydra_plugins.hydra_submitit_launcher.config", "LocalQueueConf", "slurm",
        {"tasks_per_node": ONE_PROCESS_PER_GPU}),
    "hydra/launcher/submitit_slurm": PluginConfig(
        "hydra_plugins.hydra_submitit_launcher.config", "SlurmQueueConf", "slurm",
        {"tasks_per_node": ONE_PROCESS_PER_GPU,
         "max_num_timeout": 100}),  # re-queued at its time limit up to 100 times, each time from its checkpoint
    "hydra/sweeper/optuna": PluginConfig(
        "hydra_plugins.hydra_optuna_sweeper.config", "OptunaSweeperConf", "optuna", {"direction": "maximize"}),
}


def missing_extra(what: str, extra: str) -> ConfigError:
    return ConfigError(f"{what} needs facetrain's '{extra}' extra, which is not installed",
                       f'pip install -e ".[{extra}]"')


def require(module: str, what: str, extra: str) -> ModuleType:
    """``module`` imported, or the one-line ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing_extra(what, extra) from None


def store_plugin_configs() -> None:
    """Store facetrain's config of each installed plugin over the plugin's own (plugins not installed are skipped)."""
    Plugins.instance()  # Hydra's plugin discovery, which stores the plugins' configs, runs once: now
    for path, plugin in PLUGIN_CONFIGS.items():
        try:
            schema = getattr(importlib.import_module(plugin.module), plugin.schema)
        except ImportError:
            continue
        group, name = path.rsplit("/", 1)
        node = OmegaConf.merge(OmegaConf.structured(schema), plugin.defaults)
        ConfigStore.instance().store(group=group, name=name, node=node, provider="facetrain")


def plugin_missing(config_path: str) -> Optional[ConfigError]:
    """The error for a plugin config that could not be found (``hydra/launcher/submitit_slurm``: the plugin is
    not installed), or None when ``config_path`` is none of them."""
    plugin = PLUGIN_CONFIGS.get(config_path)
    if plugin is None:
        return None
    group, name = config_path.rsplit("/", 1)
    return missing_extra(f"{group}={name}", plugin.extra)


SLURM_COMMANDS = ("sbatch", "srun", "sacct")  # what submitit runs to submit SLURM jobs and to follow them


def missing_launcher_command(chain: Sequence[BaseException]) -> Optional[ConfigError]:
    """The error for ``hydra/launcher=submitit_slurm`` on a machine without SLURM, given a failure's exception
    ``chain``: a SLURM command that could not be started, or an error raised in submitit's SLURM code while a
    SLURM command is not on the PATH (submitit's own check for ``srun``); None for any other failure."""
    absent = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    for error in chain:
        started = getattr(error, "filename", None) if isinstance(error, FileNotFoundError) else None
        missing = [started] if started in SLURM_COMMANDS else absent if _raised_in(error, "submitit.slurm") else []
        if missing:
            return ConfigError(f"hydra/launcher=submitit_slurm runs SLURM's {', '.join(missing)}, which this machine "
                               "does not have (not on the PATH)",
                               "run the sweep where SLURM is (a login node), or use hydra/launcher=submitit_local to run "
                               "its jobs on this machine, or run without -m for a single run")
    return None


def _raised_in(error: BaseException, package: str) -> bool:
    """Whether ``error`` was raised by code of ``package`` (its innermost frame's module)."""
    innermost: Optional[TracebackType] = error.__traceback__
    while innermost is not None and innermost.tb_next is not None:
        innermost = innermost.tb_next
    return innermost is not None and str(innermost.tb_frame.f_globals.get("__name__", "")).startswith(package)
