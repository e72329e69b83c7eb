"""ONNX recognition models wherever a checkpoint is accepted: evaluate.py, eval_ijb.py, identify.py and
extract_features.py give a facetrain model's ONNX export the figures of its checkpoint; insightface's input
convention is read from the model; a file that is not a usable ONNX model stops a script in one line."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from facetrain import load_backbone
from facetrain.data.images import encode_jpeg
from facetrain.data.synthetic_faces import render_face, sample_identity
from facetrain.eval.embed import embed_images
from facetrain.inference_onnx import OnnxBackbone
from tests.eval_helpers import load_script, write_checkpoint
from tests.test_ijb import make_ijb, run_eval_ijb
from tests.test_script_errors import one_line

pytestmark = pytest.mark.usefixtures("one_thread")
AGREE = 1e-4  # max |onnx - torch| relative to max |torch|, the export's own parity bound


def export(checkpoint: Path, out: Path) -> Path:
    """``checkpoint``'s backbone written by scripts/export_onnx.py (the project's own export)."""
    assert load_script("export_onnx").main([str(checkpoint), "--output", str(out)]) == 0
    return out


def assert_agree(onnx_values: np.ndarray, torch_values: np.ndarray) -> None:
    assert onnx_values.shape == torch_values.shape
    assert np.abs(onnx_values - torch_values).max() <= AGREE * np.abs(torch_values).max()


@pytest.fixture(scope="module")
def faces_and_models(tmp_path_factory) -> dict:
    """Eight synthetic faces, a ``lfw.bin`` of 20 pairs over them, a checkpoint calibrated on them and its export."""
    root = tmp_path_factory.mktemp("onnx")
    rng = np.random.default_rng(0)
    people = [render_face(sample_identity(rng), rng) for _ in range(8)]
    jpegs, issame = [], []
    for i in range(20):
        a, b = people[i % 8], people[(i + 3) % 8]
        same = i % 2 == 0
        jpegs += [encode_jpeg(a), encode_jpeg(np.roll(a, (i % 3 + 1, 2), axis=(0, 1)) if same else b)]
        issame.append(same)
    (root / "lfw.bin").write_bytes(pickle.dumps((jpegs, issame)))
    for p, face in enumerate(people):  # identify.py's folders: two shots of each person, gallery and probe
        for part, shift in (("gallery", 0), ("probe", 2)):
            (root / part / f"p{p}").mkdir(parents=True)
            (root / part / f"p{p}" / "a.jpg").write_bytes(encode_jpeg(np.roll(face, shift, axis=1)))
    write_checkpoint(root / "model.pt", calibrate=np.stack(people))
    return {"root": root, "faces": np.stack(people), "checkpoint": root / "model.pt",
            "onnx": export(root / "model.pt", root / "model.onnx")}


def test_an_export_embeds_as_its_checkpoint(faces_and_models):
    model = load_backbone(faces_and_models["onnx"])
    assert isinstance(model, OnnxBackbone) and list(model.parameters()) == []
    reference = embed_images(load_backbone(faces_and_models["checkpoint"]), faces_and_models["faces"], batch_size=3)
    assert_agree(embed_images(model, faces_and_models["faces"], batch_size=3), reference)


def test_evaluate_gives_an_export_the_accuracy_of_its_checkpoint(faces_and_models, tmp_path):
    root = faces_and_models["root"]
    argv = [str(faces_and_models["checkpoint"]), str(faces_and_models["onnx"]), "--targets", "lfw", "--data-root",
            str(root), "--json", str(tmp_path / "r.json"), "--device", "cpu", "--no-progress", "--workers", "0"]
    assert load_script("evaluate").main(argv) == 0
    checkpoint, exported = (m["targets"]["lfw"] for m in json.loads((tmp_path / "r.json").read_text())["models"])
    assert exported["accuracy"] == checkpoint["accuracy"] and exported["pairs"] == 20
    assert exported["std"] == pytest.approx(checkpoint["std"]) and checkpoint["accuracy"] > 0.5


def test_extract_features_of_an_export_agree_with_its_checkpoint(faces_and_models, tmp_path):
    script, images = load_script("extract_features"), faces_and_models["root"] / "gallery"
    for name in ("checkpoint", "onnx"):
        argv = [str(faces_and_models[name]), "--images", str(images), "--output", str(tmp_path / f"{name}.npy"),
                "--device", "cpu", "--workers", "0", "--no-progress"]
        assert script.main(argv) == 0
    assert_agree(np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "checkpoint.npy"))


def test_identify_ranks_an_export_as_its_checkpoint(faces_and_models, tmp_path):
    root, reports = faces_and_models["root"], []
    for name in ("checkpoint", "onnx"):
        argv = [str(faces_and_models[name]), "--gallery", str(root / "gallery"), "--probe", str(root / "probe"),
                "--output", str(tmp_path / name), "--device", "cpu", "--workers", "0", "--no-progress"]
        assert load_script("identify").main(argv) == 0
        report = json.loads((tmp_path / name / "identification.json").read_text())
        reports.append({k: v for k, v in report.items() if k != "checkpoint"})
    assert reports[0] == reports[1] and reports[0]["probes"] == 8


def test_eval_ijb_gives_an_export_the_figures_of_its_checkpoint(tmp_path):
    ijb = make_ijb(tmp_path / "ijb")
    assert run_eval_ijb(ijb, tmp_path / "torch") == 0
    export(ijb["root"] / "model.pt", ijb["root"] / "model.onnx")
    (ijb["root"] / "model.pt").unlink()
    (ijb["root"] / "model.onnx").rename(ijb["root"] / "model.pt")  # run_eval_ijb names model.pt: told by content
    assert run_eval_ijb(ijb, tmp_path / "onnx") == 0
    for report in ("ijbc.json", "ijbc_1n.json"):
        torch_report, onnx_report = (json.loads((tmp_path / d / report).read_text()) for d in ("torch", "onnx"))
        assert onnx_report == torch_report
    assert_agree(np.load(tmp_path / "onnx" / "ijbc_scores.npy"), np.load(tmp_path / "torch" / "ijbc_scores.npy"))


# ---- insightface's input convention -----------------------------------------------------------------------------
def channel_means_model(path: Path, node_names: tuple[str, str, str], batch: int | str = "N", size: int = 112) -> Path:
    """An ONNX graph ``((x - 127.5) * (1/127.5)).mean over H, W`` -> ``[N, 3]`` whose first nodes have the given
    names (MXNet's converter names them ``_minus0``, ``_mul0``; facetrain's exporter ``/conv1/Conv`` etc.)."""
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"], name=node_names[0]),
             helper.make_node("Mul", ["centred", "scale"], ["scaled"], name=node_names[1]),
             helper.make_node("ReduceMean", ["scaled"], ["pooled"], axes=[2, 3], keepdims=0, name=node_names[2])]
    graph = helper.make_graph(
        nodes, "means", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [batch, 3])],
        [helper.make_tensor("mean", TensorProto.FLOAT, [], [127.5]), helper.make_tensor("scale", TensorProto.FLOAT, [], [1 / 127.5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def rgb_input() -> torch.Tensor:
    """facetrain's input of four images whose red, green and blue planes hold different values."""
    return torch.rand(4, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_a_model_normalising_inside_gets_raw_pixels_in_rgb_order(tmp_path):
    """insightface's rule: Sub and Mul among the first eight nodes -> mean 0, std 1 (pixels 0..255), RGB."""
    x = rgb_input()
    model = load_backbone(channel_means_model(tmp_path / "m.onnx", ("_minus0", "_mul0", "pool")))
    torch.testing.assert_close(model(x), x.mean((2, 3)), rtol=0, atol=1e-5)


def test_a_model_without_sub_and_mul_first_gets_facetrain_input_unchanged(tmp_path):
    """Anything else (w600k_r50.onnx, facetrain's exports) takes (x - 127.5) / 127.5, facetrain's own input."""
    x = rgb_input()
    model = load_backbone(channel_means_model(tmp_path / "m.onnx", ("a", "b", "c")))
    torch.testing.assert_close(model(x), ((x - 127.5) / 127.5).mean((2, 3)), rtol=0, atol=1e-5)


def test_a_model_of_fixed_batch_size_embeds_any_number_of_images(tmp_path):
    x = rgb_input()[:3]
    model = load_backbone(channel_means_model(tmp_path / "m.onnx", ("_minus0", "_mul0", "pool"), batch=1))
    assert model.fixed_batch == 1
    torch.testing.assert_close(model(x), x.mean((2, 3)), rtol=0, atol=1e-5)


# ---- files that are no usable ONNX model -----------------------------------------------------------------------
@pytest.mark.parametrize(("damage", "message"), [
    ("truncated", "is not a readable ONNX model"),
    ("input_size", "takes tensor(float) [1, 3, 64, 64], not float [N,3,112,112] images"),
    ("text", "is neither a torch file nor a safetensors file"),
])
def test_scripts_refuse_a_file_that_is_no_usable_model_in_one_line(faces_and_models, tmp_path, capsys, damage, message):
    path = tmp_path / "model.onnx"
    if damage == "truncated":
        data = faces_and_models["onnx"].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif damage == "input_size":
        channel_means_model(path, ("a", "b", "c"), batch=1, size=64)
    else:
        path.write_text("not a model")
    root = faces_and_models["root"]
    line = one_line(capsys, "evaluate", [str(path), "--targets", "lfw", "--data-root", str(root), "--no-progress"])
    assert message in line
    assert message in one_line(capsys, "extract_features", [str(path), "--images", str(root / "gallery"),
                                                             "--output", str(tmp_path / "f.npy")])


def test_a_safetensors_file_whose_header_length_starts_like_onnx_is_not_taken_for_one(tmp_path):
    """A header of 0x12_01_08 bytes: its length's first bytes read as ONNX's ir_version tag, but byte 8 opens JSON."""
    from facetrain.inference_onnx import looks_like_onnx

    path = tmp_path / "weights.safetensors"
    path.write_bytes((0x120108).to_bytes(8, "little") + b'{"__metadata__": {}}'.ljust(0x120108))
    assert not looks_like_onnx(path)
    assert looks_like_onnx(channel_means_model(tmp_path / "m.onnx", ("a", "b", "c")))


def test_export_onnx_refuses_an_onnx_model_in_one_line(faces_and_models, tmp_path, capsys):
    line = one_line(capsys, "export_onnx", [str(faces_and_models["onnx"]), "--output", str(tmp_path / "again.onnx")])
    assert "is an ONNX model already" in line


@pytest.mark.parametrize("names", [("_minus0", "_mul0", "pool"), ("Sub_0", "Mul_1", "pool"), ("a", "b", "c")],
                         ids=["mxnet", "sub_mul", "plain"])
def test_the_convention_and_embeddings_are_insightfaces(tmp_path, names):
    """insightface's own ArcFaceONNX (installed package) on the same model: the same mean and std, and its get_feat
    on the BGR image gives our embedding of the RGB image."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = channel_means_model(tmp_path / "m.onnx", names)
    theirs, ours = ArcFaceONNX(model_file=str(path)), load_backbone(path)
    assert (theirs.input_mean, theirs.input_std) == (ours.pixel_mean, ours.pixel_std)
    image = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    expected = theirs.get_feat(np.ascontiguousarray(image[:, :, ::-1]))  # insightface takes OpenCV's BGR
    got = embed_images(ours, image[None], flip="none")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
