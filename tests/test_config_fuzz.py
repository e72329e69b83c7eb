"""Every bad value is one facetrain line: every leaf key of every shipped config gets a value of the wrong type
and, where its rule has a range, one outside it. The list of keys is read from the configs themselves, so a
new key is covered the day it is added, and every schema field must have declared its rule.

Composition and checks only (no training, nothing written); the command line's own handling (exit code 2,
no checkpoint) is tried on a few of them."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, ListConfig, OmegaConf

from facetrain.config import groups
from facetrain.config import schema as top_level
from facetrain.runs.failure import describe_error, is_user_error
from facetrain.config import register_schemas
from facetrain.config.checks import TYPED, check_config, rules
from facetrain.runs.run_dir import register_resolvers
from facetrain.train import check_training_config
from tests.conftest import SMOKE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("backbone", "loss", "dataset", "optimizer", "scheduler", "distill")
register_schemas()
register_resolvers()


def leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any, type]]:
    """``(dotted key, value, schema class)`` of every leaf under ``node``."""
    schema = OmegaConf.get_type(node)
    for key in node:
        value = node._get_node(key)._value() if OmegaConf.is_missing(node, key) else OmegaConf.select(node, str(key))
        if isinstance(value, DictConfig) and OmegaConf.get_type(value) is not dict:
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value, schema


def cases() -> list[tuple[list[str], str, Any, type]]:
    """Every leaf of the default config and of each option of each group (the group chosen by its override)."""
    found: dict[tuple[str, ...], tuple[list[str], str, Any, type]] = {}
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        base = compose(config_name="train", overrides=SMOKE)
        for key, value, schema in leaves(base):
            found[(key,)] = (list(SMOKE), key, value, schema)
        for group in GROUPS:
            for option in sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")):
                overrides = [f"{group}={option}"] + (["dataset.root=/data"] if group == "dataset" else [])
                cfg = compose(config_name="train", overrides=overrides)
                for key, value, schema in leaves(cfg[group], f"{group}."):
                    found[(option, key)] = (overrides, key, value, schema)
    return list(found.values())


CASES = cases()


def test_every_schema_field_declares_its_rule():
    classes = [cls for module in (groups, top_level) for cls in vars(module).values() if dataclasses.is_dataclass(cls)]
    missing = [f"{cls.__name__}.{f.name}" for cls in classes for f in dataclasses.fields(cls) if f.name not in rules(cls)]
    assert missing == [], "declare a rule (or TYPED) in facetrain/config/checks.py for: " + ", ".join(missing)


def wrong_type(value: Any) -> Any:
    """A value the key's type refuses, or None when its type takes any text."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return "abc"
    if isinstance(value, ListConfig) and len(value) and isinstance(value[0], (int, float)):
        return "[abc]"
    return None  # text (names, paths, modes checked by their rule or registry), lists of text, dicts


def refused(overrides: list[str], key: str, value: str) -> str:
    """The one line a user gets for ``key=value``; fails the test when it is accepted."""
    override = f"{key}={value}"
    try:
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*overrides, override])
        check_config(cfg)
    except Exception as exc:  # noqa: BLE001 - whatever it is, the user sees describe_error's line
        line = describe_error(exc)
        assert is_user_error(exc), f"{override}: {type(exc).__name__} is not a user error (exit 1, not 2): {line}"
        assert "\n" not in line and key in line and "$VALUE" not in line, f"{override}: {line}"
        return line
    raise AssertionError(f"{' '.join(overrides)} {override} was accepted")


@pytest.mark.parametrize(("overrides", "key", "value", "schema"), CASES,
                         ids=[" ".join([*case[0], case[1]]) for case in CASES])
def test_a_bad_value_of_every_key_is_one_line_naming_it(overrides, key, value, schema):
    bad = wrong_type(value)
    if bad is not None:
        refused(overrides, key, bad)
    rule = rules(schema).get(key.rsplit(".", 1)[-1])
    if rule is not TYPED and rule.bad is not None:
        shown = "[" + ",".join(map(str, rule.bad)) + "]" if isinstance(rule.bad, list) else str(rule.bad)
        line = refused(overrides, key, shown)
        assert "is out of range" in line and "e.g." in line, line


@pytest.mark.parametrize("override", ["loss.m=abc", "trainer.precision=fp8", "embedding_size=-1", "optimizer.lr=-1",
                                      "scheduler.warmup_epochs=-1", "loss.m=4", "trainer.hflip=1.5"])
def test_the_command_line_exits_2_with_one_line_and_no_checkpoint(run_cli, tmp_path, override):
    result = run_cli(*SMOKE, override)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"facetrain: error: {override.split('=')[0]}="), last
    assert not list((tmp_path / "outputs").glob("*/*/checkpoints/*.pt"))


@pytest.mark.parametrize(("overrides", "message"), [
    (["loss=x2softmax", "loss.a=0.9"], "loss.a=0.9 is out of range (a negative number"),
    (["loss=combined", "loss.m1=0.5", "loss.m2=0", "loss.m3=0"], "loss=combined with these margins does not penalise"),
    (["loss=x2softmax", "loss.a=-0.1", "loss.k=0.9"], "loss=x2softmax with these margins does not penalise"),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], "optimizer.nesterov=true needs momentum"),
    (["scheduler.warmup_epochs=5", "trainer.max_steps=null", "trainer.max_epochs=2"], "is not below trainer.max_epochs=2"),
])
def test_rules_that_span_keys(overrides, message):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*SMOKE, *overrides])
    with pytest.raises(Exception) as caught:
        check_training_config(cfg)
    assert message in describe_error(caught.value)


def test_unusual_but_legal_values_warn_once(caplog):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*SMOKE, "loss.m=1.2"])
    for _ in range(2):
        check_config(cfg)
    assert caplog.text.count("loss.m=1.2 is legal but unusual: the papers use margins up to about 0.8") == 1


def test_resume_and_another_run_dir_are_refused(run_cli, train_in_process, tmp_path):
    train_in_process(*SMOKE, "trainer.max_steps=2", "eval.at_start=false", run_dir=tmp_path / "a")
    result = run_cli(*SMOKE, f"resume={tmp_path / 'a'}", f"hydra.run.dir={tmp_path / 'b'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"facetrain: error: resume={tmp_path / 'a'} and hydra.run.dir={tmp_path / 'b'} name different runs; "
        "drop hydra.run.dir: a resumed run writes into the run it resumes")
