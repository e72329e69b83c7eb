"""scripts/import_weights.py keeps the backbone settings a file holds as literals: they never become Hydra
override strings, where ``${oc.env:...}`` would be resolved, a comma start a sweep and quotes be stripped."""
from __future__ import annotations

import os

import pytest

from facetrain.backbones import build_backbone
from facetrain.runs.checkpoint import save_checkpoint
from tests.eval_helpers import load_script

import_script = load_script("import_weights")
pytestmark = pytest.mark.usefixtures("one_thread")

LITERALS = ["${oc.env:HOME}", "a,b", "[x, y]", "'quoted'", "null", "k=v", "\\${oc.env:HOME}", "${oc.env:HOME}:x"]


@pytest.mark.parametrize("value", LITERALS)
def test_file_settings_are_kept_as_literals(value):
    settings = import_script.backbone_settings("timm", 512, {"model": value, "dropout": 0.25})
    assert settings["model"] == value and settings["dropout"] == 0.25
    assert settings["weights"] is None  # the config's default for what the file leaves out


def test_file_settings_keep_their_types_and_the_defaults_fill_the_rest():
    settings = import_script.backbone_settings("mbf", 128, {"blocks": [1, 2, 3, 4]})
    assert settings["blocks"] == [1, 2, 3, 4] and isinstance(settings["scale"], int)


@pytest.mark.parametrize(("model", "shown"), [
    ("'resnet18'", "backbone.model='resnet18' is not a timm model"),  # Hydra would have unquoted it and imported
    ("resnet18,resnet34", "backbone.model=resnet18,resnet34 is not a timm model"),  # a sweep: a raw traceback
    ("${oc.env:HOME}", ""),  # never $HOME's value
])
def test_crafted_file_settings_reach_the_error_unparsed(tmp_path, capsys, model, shown):
    state = build_backbone("timm", 512, model="resnet18", dropout=0.0).state_dict()
    source = tmp_path / "crafted.pt"
    save_checkpoint({"backbone": state, "config": {"backbone": {"name": "timm", "model": model, "dropout": 0.0},
                                                   "embedding_size": 512}}, source)
    assert import_script.main([str(source), "--output", str(tmp_path / "imported.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and shown in err[0], err
    assert os.environ["HOME"] not in err[0].replace(str(tmp_path), "")
    assert not (tmp_path / "imported.pt").exists()
