"""scripts/evaluate.py and scripts/extract_features.py on generated data, and loading checkpoints
with facetrain.load_backbone."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import facetrain
from facetrain.data.images import decode_image, encode_jpeg
from facetrain.data.synthetic_faces import render_face, sample_identity
from facetrain.data.transforms import normalize
from facetrain.errors import ModelError
from facetrain.eval.verification import evaluate
from facetrain.runs.run_dir import find_checkpoint
from tests.eval_helpers import TINY_MBF, load_script, write_checkpoint

evaluate_script = load_script("evaluate")
extract_features = load_script("extract_features")
pytestmark = pytest.mark.usefixtures("one_thread")


def faces(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_face(sample_identity(rng), rng) for _ in range(count)]


@pytest.fixture(scope="module")
def bin_set(tmp_path_factory) -> dict:
    """``lfw.bin`` written by the format's rule (a pickle of (JPEG bytes, issame)) and a run directory
    whose checkpoint's BN statistics come from the same faces."""
    root = tmp_path_factory.mktemp("bins")
    people = faces(8)
    jpegs, issame = [], []
    for i in range(20):  # genuine pairs: a face and the face moved by a few pixels; impostors: two faces
        a, b = people[i % 8], people[(i + 3) % 8]
        same = i % 2 == 0
        jpegs += [encode_jpeg(a), encode_jpeg(np.roll(a, (i % 3 + 1, 2), axis=(0, 1)) if same else b)]
        issame.append(same)
    (root / "lfw.bin").write_bytes(pickle.dumps((jpegs, issame)))
    run_dir = root / "run"
    backbone = write_checkpoint(run_dir / "checkpoints" / "step_000000006.pt", calibrate=np.stack(people),
                                head={"weight": torch.zeros(3, 7)}, world_size=4)
    return {"root": root, "run_dir": run_dir, "backbone": backbone, "jpegs": jpegs, "issame": np.array(issame)}


def expected_metrics(backbone: torch.nn.Module, jpegs: list[bytes], issame: np.ndarray) -> dict:
    """The protocol's figures from embeddings computed here: image plus mirror image, summed."""
    images = normalize(torch.from_numpy(np.stack([decode_image(j) for j in jpegs])).permute(0, 3, 1, 2))
    with torch.no_grad():
        embeddings = backbone(images) + backbone(images.flip(3))
    return evaluate(embeddings.numpy(), issame)


def test_evaluate_prints_the_table_and_writes_json(bin_set, tmp_path, capsys):
    out = tmp_path / "results.json"
    argv = [str(bin_set["run_dir"]), "--targets", "lfw", "--data-root", str(bin_set["root"]), "--json", str(out),
            "--batch-size", "7", "--device", "cpu", "--no-progress"]
    assert evaluate_script.main(argv) == 0
    expected = expected_metrics(bin_set["backbone"], bin_set["jpegs"], bin_set["issame"])
    report = json.loads(out.read_text())
    assert report["flip"] == "sum" and len(report["models"]) == 1
    model = report["models"][0]
    assert model["model"] == "run" and model["checkpoint"].endswith("step_000000006.pt")
    result = model["targets"]["lfw"]
    assert result.pop("pairs") == 20
    assert result.pop("tar_at_far") == expected.pop("tar_at_far") == {"1e-3": None, "1e-4": None}  # 10 negatives
    assert result == pytest.approx(expected) and result["accuracy"] > 0.5
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["target", "pairs", "accuracy", "(%)", "TAR@FAR=1e-3", "(%)"]
    assert lines[1].split() == ["lfw", "20", f"{100 * expected['accuracy']:.2f}", "+-", f"{100 * expected['std']:.2f}", "-"]


def write_bin(path: Path, content: object) -> Path:
    path.write_bytes(pickle.dumps(content))
    return path


@pytest.mark.parametrize("content, expected", [
    (b"not a pickle", "is not a verification .bin (UnpicklingError"),
    ({"images": 1}, "is not a verification .bin (it holds a dict, not a pair of lists)"),
    ((["x"] * 5, [True, False, True]), "has 5 images for 3 pairs; a verification .bin holds exactly two images per pair"),
])
def test_bad_bin_is_one_line(bin_set, tmp_path, capsys, content, expected):
    path = tmp_path / "bad.bin"
    path.write_bytes(content) if isinstance(content, bytes) else write_bin(path, content)
    assert evaluate_script.main([str(bin_set["run_dir"]), "--targets", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("evaluate: error: ") and expected in err


def test_targets_named_twice_are_refused(bin_set, capsys):
    argv = [str(bin_set["run_dir"]), "--targets", "lfw", str(bin_set["root"] / "lfw.bin"),
            "--data-root", str(bin_set["root"])]
    assert evaluate_script.main(argv) == 2
    assert "two verification targets are named 'lfw'" in capsys.readouterr().err


# ---- load_backbone ----------------------------------------------------------------------------------
def test_load_backbone_reads_only_backbone_and_config(tmp_path):
    """A checkpoint of 8 processes whose head is stored as shards (and whose optimizer is not ours)."""
    shards = {"shards": [torch.randn(5, 32) for _ in range(8)]}
    expected = write_checkpoint(tmp_path / "c.pt", head=shards, optimizer={"opaque": object.__name__}, world_size=8)
    loaded = facetrain.load_backbone(tmp_path / "c.pt")
    assert not loaded.training
    for (name, a), b in zip(expected.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_load_backbone_from_a_run_directory_takes_the_newest_checkpoint(tmp_path):
    write_checkpoint(tmp_path / "run" / "checkpoints" / "step_000000003.pt", seed=1)
    newest = write_checkpoint(tmp_path / "run" / "checkpoints" / "step_000000010.pt", seed=2)
    write_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", seed=3)
    loaded = facetrain.load_backbone(tmp_path / "run")
    assert all(torch.equal(a, b) for a, b in zip(newest.state_dict().values(), loaded.state_dict().values()))
    write_checkpoint(tmp_path / "only_best" / "checkpoints" / "best.pt", seed=3)
    assert find_checkpoint(tmp_path / "only_best").name == "best.pt"


def test_load_backbone_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelError, match="does not exist; pass a checkpoint file"):
        facetrain.load_backbone(tmp_path / "missing.pt")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ModelError, match="holds no checkpoint"):
        facetrain.load_backbone(tmp_path / "empty_run")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="is not a facetrain checkpoint"):
        facetrain.load_backbone(tmp_path / "other.pt")


# ---- extract_features -------------------------------------------------------------------------------
def test_extract_features_from_a_folder_and_a_list(tmp_path, capsys):
    backbone = write_checkpoint(tmp_path / "model.pt", backbone_config=TINY_MBF)
    people = faces(4, seed=5)
    (tmp_path / "imgs" / "b").mkdir(parents=True)
    files = {"a.jpg": people[0], "b/c.png": people[1], "b/d.jpg": people[2], "e.jpg": people[3][::2, ::2]}
    for name, image in files.items():
        (tmp_path / "imgs" / name).write_bytes(encode_jpeg(image) if name.endswith("jpg") else _png(image))
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out" / "feats.npy"
    argv = [str(tmp_path / "model.pt"), "--images", str(tmp_path / "imgs"), "--output", str(out),
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--flip", "concat", "--no-progress"]
    assert extract_features.main(argv) == 0
    names = (tmp_path / "out" / "feats.txt").read_text().splitlines()
    assert names == ["a.jpg", "b/c.png", "b/d.jpg", "e.jpg"]  # sorted, broken.jpg left out
    assert "skipping" in capsys.readouterr().err
    images = np.stack([decode_image((tmp_path / "imgs" / n).read_bytes(), size=112) for n in names])
    batch = normalize(torch.from_numpy(images).permute(0, 3, 1, 2))
    with torch.no_grad():
        expected = torch.cat([backbone(batch), backbone(batch.flip(3))], 1).numpy()
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-4, atol=1e-5)

    (tmp_path / "list.txt").write_text(f"imgs/b/d.jpg 3\n# comment\n{tmp_path / 'imgs' / 'a.jpg'}\n")
    argv[2], argv[4] = str(tmp_path / "list.txt"), str(tmp_path / "listed.npy")
    assert extract_features.main(argv) == 0
    np.testing.assert_allclose(np.load(tmp_path / "listed.npy"), expected[[2, 0]], rtol=1e-4, atol=1e-5)


def _png(image: np.ndarray) -> bytes:
    import cv2

    return cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()
