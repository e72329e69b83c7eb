"""ONNX export: onnxruntime agrees with PyTorch on every backbone, through scripts/export_onnx.py."""
from __future__ import annotations

import onnx
import pytest
import torch

from facetrain.backbones import BACKBONES, build_backbone
from facetrain.export import check_onnx, export_onnx
from tests.eval_helpers import TINY_MBF, load_script, write_checkpoint

export_script = load_script("export_onnx")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("config", [{"name": "r18", "dropout": 0.0}, TINY_MBF], ids=["r18", "mbf"])
def test_export_script_checks_parity(tmp_path, capsys, config):
    write_checkpoint(tmp_path / "run" / "checkpoints" / "step_000000001.pt", config, embedding_size=128)
    out = tmp_path / "model.onnx"
    assert export_script.main([str(tmp_path / "run"), "--output", str(out)]) == 0
    report = capsys.readouterr().out
    assert "max abs diff" in report and "batches of 1 and 3" in report
    graph = onnx.load(str(out)).graph
    assert graph.input[0].name == "input" and graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert graph.output[0].name == "embedding" and graph.output[0].type.tensor_type.shape.dim[1].dim_value == 128


def test_parity_failure_fails_the_command(tmp_path, capsys, monkeypatch):
    """A model that disagrees with PyTorch (here: weights changed after export) is reported and kept."""
    write_checkpoint(tmp_path / "model.pt", TINY_MBF)
    real_export = export_script.export_onnx

    def export_then_perturb(backbone, path, opset):
        real_export(backbone, path, opset)
        with torch.no_grad():
            backbone.fc.weight.mul_(1.01)

    monkeypatch.setattr(export_script, "export_onnx", export_then_perturb)
    assert export_script.main([str(tmp_path / "model.pt"), "--output", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differs from PyTorch" in err and (tmp_path / "m.onnx").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_exports(tmp_path, name):
    torch.manual_seed(0)
    backbone = build_backbone(name, 512).eval()
    parity = check_onnx(backbone, export_onnx(backbone, tmp_path / f"{name}.onnx"))
    assert parity.ok, parity
