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


@pytest.mark.parametrize(("name", "hparams"), [
    ("ir_se_50", {}), ("vit_t", {}), ("mobilenet_v3_large", {}), ("timm", {"model": "convnext_tiny"}),
    ("timm", {"model": "vit_tiny_patch16_224"}), ("timm", {"model": "swin_tiny_patch4_window7_224"}),
], ids=["ir_se_50", "vit_t", "mobilenet_v3_large", "timm_convnext", "timm_vit", "timm_swin"])
def test_every_family_exports_with_parity(tmp_path, name, hparams):
    """IResNet and MobileFaceNet: the script tests above; the other families and timm's layouts here."""
    torch.manual_seed(0)
    backbone = build_backbone(name, 128, **hparams).eval()
    parity = check_onnx(backbone, export_onnx(backbone, tmp_path / "model.onnx"))
    assert parity.ok, parity


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKBONES.names())
def test_every_backbone_exports(tmp_path, name):
    torch.manual_seed(0)
    backbone = build_backbone(name, 512).eval()
    parity = check_onnx(backbone, export_onnx(backbone, tmp_path / f"{name}.onnx"))
    assert parity.ok, parity


def test_onnx_export_is_a_drop_in_recognition_model_for_the_insightface_package(tmp_path):
    """insightface's model zoo takes the exported file as its ArcFace recognition model: BGR uint8 crops in,
    through its own (x - 127.5) / 127.5 and channel swap, the same embeddings as facetrain's (RGB) out."""
    import numpy as np
    from insightface.model_zoo import get_model

    from facetrain.data.transforms import normalize

    torch.manual_seed(0)
    backbone = build_backbone("mbf", 512, blocks=[1, 1, 1, 1], scale=1).eval()
    model = get_model(str(export_onnx(backbone, tmp_path / "w600k_like.onnx")))
    assert type(model).__name__ == "ArcFaceONNX" and (model.input_mean, model.input_std) == (127.5, 127.5)
    model.prepare(ctx_id=-1)
    rgb = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    theirs = model.get_feat([image[:, :, ::-1].copy() for image in rgb])  # insightface works on cv2's BGR images
    with torch.no_grad():
        ours = backbone(normalize(torch.from_numpy(rgb).permute(0, 3, 1, 2))).numpy()
    assert np.abs(theirs - ours).max() <= 1e-4 * np.abs(ours).max()
