"""Released weights in and out: every layout facetrain reads is recognised from its keys, converted to the
same tensors in our keys (RGB input), and written back identically; bad files get one line.

Official layouts are rebuilt here from facts recorded by running the official code (key names and shapes in
``tests/fixtures``: arcface_torch at insightface 7fadd420, AdaFace at c60eaa78), filled with random tensors.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import facetrain
from facetrain.weights import read_layout
from facetrain.eval.input_check import CONVENTIONS, convention_warnings
from tests.eval_helpers import load_script

FIXTURES = Path(__file__).parent / "fixtures"
import_script, export_script = load_script("import_weights"), load_script("export_weights")
pytestmark = pytest.mark.usefixtures("one_thread")


def official(fixture: str, name: str, prefix: str = "", dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A state dict in an official layout (key names and shapes from ``fixture``), random floats."""
    generator = torch.Generator().manual_seed(0)
    facts = json.loads((FIXTURES / fixture).read_text())[name]
    facts = facts["state_dict"] if isinstance(facts, dict) else facts  # the ViT fixture also holds get_model's settings
    return {prefix + key: (torch.rand(shape, generator=generator) * 0.2 + 0.9).to(dtype) if not key.endswith("tracked")
            else torch.tensor(7) for key, shape in facts}


def import_file(tmp_path: Path, content, *args: str) -> int:
    source = tmp_path / "source.pth"
    torch.save(content, source)
    return import_script.main([str(source), "--output", str(tmp_path / "imported.pt"), *args])


@pytest.mark.parametrize(("name", "backbone", "prefix", "dtype"), [
    ("r50", "r50", "", torch.float32), ("r50", "r50", "module.", torch.float16),
    ("mbf", "mbf", "", torch.float32), ("mbf_large", "mbf", "module.", torch.float16),
])
def test_arcface_torch_files_import_as_the_same_tensors_and_export_back(tmp_path, capsys, name, backbone, prefix, dtype):
    source = official("arcface_torch_keys.json", name, prefix, dtype)
    assert import_file(tmp_path, source, "--backbone", backbone) == 0
    assert "arcface_torch" in capsys.readouterr().out
    state = torch.load(tmp_path / "imported.pt", weights_only=True)
    ours = state["backbone"]
    assert len(ours) == len(source) and state["input"]["channel_order"] == "RGB"
    for (key, value), mine in zip(source.items(), ours.values()):  # a pure renaming: same tensors, same order
        assert torch.equal(mine, value.float() if value.is_floating_point() else value), key
    assert facetrain.load_backbone(tmp_path / "imported.pt")(torch.zeros(1, 3, 112, 112)).shape == (1, 512)
    assert export_script.main([str(tmp_path / "imported.pt"), "--format", "insightface", "--output",
                               str(tmp_path / "backbone.pth")]) == 0
    back = torch.load(tmp_path / "backbone.pth", weights_only=True)
    assert list(back) == [key[len(prefix):] for key in source]  # arcface_torch's own names, for its get_model
    assert all(torch.equal(back[key[len(prefix):]], value.to(back[key[len(prefix):]].dtype)) for key, value in source.items())


def test_arcface_torch_vit_imports_with_its_own_keys(tmp_path):
    source = official("arcface_torch_vit_keys.json", "vit_t")
    assert import_file(tmp_path, source) == 0  # the backbone comes from the keys: 12 blocks of width 256
    ours = torch.load(tmp_path / "imported.pt", weights_only=True)
    assert ours["config"]["backbone"]["name"] == "vit_t" and all(torch.equal(ours["backbone"][k], v) for k, v in source.items())


class AttributeDict(dict):
    """Lightning's hyperparameter dict, pickled under its own module name as AdaFace's checkpoints hold it."""


AttributeDict.__module__ = "pytorch_lightning.utilities.parsing"


def adaface_checkpoint(name: str) -> dict:
    """A checkpoint as AdaFace's Lightning training writes it; the network in AdaFace's layout (our IR's keys
    equal the official ones: tests/test_backbone_ir.py), with working weights so that outputs can be compared."""
    torch.manual_seed(0)
    network = facetrain.backbones.build_backbone(name, 512)
    assert [[k, list(v.shape)] for k, v in network.state_dict().items()] == json.loads(
        (FIXTURES / "adaface_ir_keys.json").read_text())[name]
    state = {f"model.{key}": value for key, value in network.state_dict().items()}
    state["head.kernel"] = torch.rand(512, 10)
    return {"epoch": 25, "global_step": 1000, "pytorch-lightning_version": "1.8.6", "state_dict": state,
            "hyper_parameters": AttributeDict(arch="ir_50", head="adaface", m=0.4)}


def test_adaface_checkpoint_imports_converted_to_rgb(tmp_path, monkeypatch):
    for name in ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"):
        monkeypatch.setitem(sys.modules, name, type(sys)(name))  # only to write the file; reading needs none
    sys.modules["pytorch_lightning.utilities.parsing"].AttributeDict = AttributeDict
    content = adaface_checkpoint("ir_50")
    assert import_file(tmp_path, content, "--backbone", "ir_50") == 0
    imported = facetrain.load_backbone(tmp_path / "imported.pt")
    ours = torch.load(tmp_path / "imported.pt", weights_only=True)["backbone"]
    source = {key[len("model."):]: value for key, value in content["state_dict"].items() if key.startswith("model.")}
    assert torch.equal(ours["input_layer.0.weight"], source["input_layer.0.weight"].flip(1))
    adaface = facetrain.backbones.build_backbone("ir_50", 512).eval()
    adaface.load_state_dict(source)  # AdaFace's model as it was trained: on BGR input
    rgb = torch.rand(2, 3, 112, 112, dtype=torch.float64) * 2 - 1  # float64: 50 layers of rounding stay small
    with torch.no_grad():
        torch.testing.assert_close(imported.double()(rgb), adaface.double()(rgb.flip(1)))
    assert export_script.main([str(tmp_path / "imported.pt"), "--format", "adaface", "--output",
                               str(tmp_path / "adaface.ckpt")]) == 0
    back = torch.load(tmp_path / "adaface.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(back[f"model.{key}"], value) for key, value in source.items())  # BGR again


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "mobilenet_v3_large"])
def test_torchvision_imagenet_files_load_the_body(tmp_path, capsys, name):
    source = getattr(torchvision.models, name)(weights=None).state_dict()
    assert import_file(tmp_path, source) == 2  # strict: the face embedding layer is not in the file
    assert "leaves 12 of the backbone's tensors new (e.g. output.bn.weight); allow it" in capsys.readouterr().err
    assert import_file(tmp_path, source, "--non-strict", "--embedding-size", "128") == 0
    ours = torch.load(tmp_path / "imported.pt", weights_only=True)["backbone"]
    body = [value for key, value in source.items() if not key.startswith(("fc.", "classifier."))]
    assert all(torch.equal(a, b) for a, b in zip([v for k, v in ours.items() if k.startswith("body.")], body))
    assert ours["output.fc.weight"].shape[0] == 128


@pytest.mark.parametrize(("content", "args", "message"), [
    ([1, 2, 3], [], "is not a state dict (it holds a list); pass a backbone's state dict"),
    ({"a.weight": torch.zeros(2)}, [], "is no weight layout facetrain knows (its first keys: a.weight)"),
    ("r50", ["--backbone", "r18"], "holds arcface_torch IResNet with stage depths (3, 4, 14, 3) = r50, but backbone=r18; use backbone=r50"),
    ("r50-missing", [], "does not match the backbone's keys: 1 missing (e.g. fc.bias)"),
    ("r50-extra", [], "does not match the backbone's keys: 1 extra (e.g. extra.weight)"),
])
def test_bad_files_are_one_line_and_write_nothing(tmp_path, capsys, content, args, message):
    if isinstance(content, str):
        state = official("arcface_torch_keys.json", "r50")
        if content.endswith("missing"):
            del state["fc.bias"]
        elif content.endswith("extra"):
            state["extra.weight"] = torch.zeros(1)
        content = state
    assert import_file(tmp_path, content, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("import_weights: error: ") and message in err[0], err
    assert not (tmp_path / "imported.pt").exists()


def test_truncated_and_crafted_files_are_refused(tmp_path, capsys):
    source = tmp_path / "source.pth"
    torch.save(official("arcface_torch_keys.json", "mbf"), source)
    source.write_bytes(source.read_bytes()[:5000])
    assert import_script.main([str(source), "--output", str(tmp_path / "out.pt")]) == 2
    assert "is unreadable" in capsys.readouterr().err
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    assert import_file(tmp_path, {"conv1.weight": Payload()}) == 2
    assert "refused: it would import posix.system" in capsys.readouterr().err and not marker.exists()


def test_a_facetrain_safetensors_export_reads_back_everywhere(tmp_path):
    torch.save(official("arcface_torch_keys.json", "mbf"), tmp_path / "mbf.pth")
    assert import_script.main([str(tmp_path / "mbf.pth"), "--output", str(tmp_path / "mbf.pt")]) == 0
    assert export_script.main([str(tmp_path / "mbf.pt"), "--format", "safetensors", "--output",
                               str(tmp_path / "mbf.safetensors")]) == 0
    found = read_layout(tmp_path / "mbf.safetensors")
    assert found.layout.source == "facetrain" and found.layout.hparams["scale"] == 2
    assert import_script.main([str(tmp_path / "mbf.safetensors"), "--output", str(tmp_path / "again.pt")]) == 0
    a, b = (torch.load(tmp_path / name, weights_only=True)["backbone"] for name in ("mbf.pt", "again.pt"))
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert export_script.main([str(tmp_path / "mbf.pt"), "--format", "adaface", "--output", str(tmp_path / "x")]) == 2


def test_convention_check_warns_when_another_input_order_is_better():
    def result(accuracy: float) -> dict:
        return {"lfw": {"accuracy": accuracy, "std": 0.004}}

    results = dict(zip(CONVENTIONS, [result(0.91), result(0.90), result(0.995), result(0.99)]))
    (line,) = convention_warnings(results)
    assert line.startswith("warning: lfw: 99.50% with BGR input and flip sum, 91.00% with facetrain's RGB + mirror image")
    assert "import it again with the other --input-order" in line
    results = dict(zip(CONVENTIONS, [result(0.991), result(0.990), result(0.9905), result(0.99)]))
    assert convention_warnings(results) == []  # within half a standard deviation: no warning
