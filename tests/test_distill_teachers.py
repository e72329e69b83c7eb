"""Teachers from anywhere: a facetrain checkpoint, its arcface_torch ``backbone.pth`` (scripts/export_weights.py), its
ONNX export (facetrain.export) and its precomputed features (scripts/extract_features.py --dataset, flip none) give
the same distillation loss at step 0 (hflip off); the
logit loss takes the head of a checkpoint; a file that is none of them is one line, exit code 2."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from facetrain.config import register_schemas
from facetrain.data import build_train_data
from facetrain.distill.teachers import load_teacher
from facetrain.errors import ConfigError, ModelError
from facetrain.export import export_onnx
from facetrain.heads import build_head
from facetrain.parallel.groups import DistInfo
from facetrain.runs.run_dir import register_resolvers
from facetrain.train import build_trainer, hparams
from tests.conftest import REPO, SMOKE
from tests.data_helpers import write_image_folder
from tests.eval_helpers import edited_checkpoint, load_script, set_config, write_checkpoint

register_schemas()
register_resolvers()
CLASSES, TEACHER_SIZE = 4, 48
COSFACE = {"name": "cosface", "s": 16.0, "m": 0.2, "interclass_filtering_threshold": 0.0}


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A dataset of 16 images and one teacher as a checkpoint (with a head), an arcface_torch weight file, an ONNX
    model and a .npy of features."""
    folder = tmp_path_factory.mktemp("distill")
    images = write_image_folder(folder / "data", [4] * CLASSES)
    pixels = np.stack([p for p, _ in images.values()])
    head = build_head(COSFACE["name"], TEACHER_SIZE, CLASSES, s=16.0, m=0.2)
    backbone = write_checkpoint(folder / "untrained.pt", embedding_size=TEACHER_SIZE, calibrate=pixels,
                                head=head.state_dict(), data={"classes": CLASSES, "images": len(pixels)})
    edited_checkpoint(folder / "untrained.pt", folder / "teacher.pt", set_config("loss", value=COSFACE))
    export_onnx(backbone, folder / "teacher.onnx")
    assert load_script("export_weights").main([str(folder / "teacher.pt"), "--format", "insightface", "--output",
                                               str(folder / "backbone.pth")]) == 0
    assert load_script("extract_features").main([str(folder / "teacher.pt"), "--dataset", str(folder / "data"), "--output",
                                                 str(folder / "teacher.npy"), "--flip", "none", "--workers", "0",
                                                 "--device", "cpu", "--no-progress"]) == 0
    return {"data": folder / "data", "checkpoint": folder / "teacher.pt", "released": folder / "backbone.pth",
            "onnx": folder / "teacher.onnx", "features": folder / "teacher.npy"}


def step0(tmp_path: Path, data: Path, *overrides: str) -> torch.Tensor:
    """The distillation term of the first batch of a run of these overrides (student: a tiny MobileFaceNet)."""
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*SMOKE, "dataset=imagefolder", f"dataset.root={data}",
                                                      "backbone.blocks=[1,1,1,1]", "embedding_size=32",
                                                      "trainer.hflip=0", "trainer.device=cpu", *overrides])
    train_data = build_train_data(cfg.dataset.name, **hparams(cfg.dataset))
    trainer = build_trainer(cfg, train_data, tmp_path, DistInfo(), torch.device("cpu"), evaluate=False)
    trainer.start_epoch()
    images, labels, indices = next(iter(trainer.loader))
    images, labels = trainer.model_inputs(images, labels, indices)
    with torch.no_grad():
        return trainer.model(images, labels, indices).diagnostics["distill_loss"]


@pytest.mark.parametrize("loss", ["feature", "rkd"])
def test_each_teacher_source_gives_the_same_loss_at_step_0(sources, tmp_path, loss):
    values = {source: step0(tmp_path / source, sources["data"], f"distill={loss}", f"distill.teacher={sources[source]}")
              for source in ("checkpoint", "released", "onnx", "features")}
    assert values["checkpoint"] > 0
    assert values["released"].item() == values["checkpoint"].item()
    # onnxruntime's kernels and channels_last round differently from PyTorch's (facetrain.export's parity: 1e-4)
    assert values["onnx"].item() == pytest.approx(values["checkpoint"].item(), rel=1e-4)
    assert values["features"].item() == pytest.approx(values["checkpoint"].item(), rel=1e-4)


def test_with_the_mirror_image_the_precomputed_teacher_differs(sources, tmp_path):
    """What precomputed features give up: the teacher saw the stored image, not the student's flipped one."""
    flipped = [step0(tmp_path / s, sources["data"], "distill=feature", f"distill.teacher={sources[s]}", "trainer.hflip=1.0")
               for s in ("checkpoint", "features")]
    assert flipped[0].item() != pytest.approx(flipped[1].item(), rel=1e-3)


def test_the_logit_loss_takes_the_head_of_a_checkpoint_and_refuses_a_teacher_without_one(sources, tmp_path):
    teacher = load_teacher(sources["checkpoint"], torch.device("cpu"), 16, head_classes=CLASSES)
    out = teacher(torch.zeros(2, 3, 112, 112), torch.tensor([0, 3]), None)
    assert out.embeddings.shape == (2, TEACHER_SIZE) and out.logits.shape == (2, CLASSES)
    assert step0(tmp_path, sources["data"], "distill=kl", f"distill.teacher={sources['checkpoint']}") > 0
    with pytest.raises(ConfigError, match="has no head, and this loss compares the heads' logits"):
        load_teacher(sources["onnx"], torch.device("cpu"), 16, head_classes=CLASSES)
    with pytest.raises(ConfigError, match="has a head for 4 classes, the dataset has 7"):
        load_teacher(sources["checkpoint"], torch.device("cpu"), 16, head_classes=7)


def test_a_network_teacher_takes_the_students_memory_format(sources):
    teacher = load_teacher(sources["checkpoint"], torch.device("cpu"), 16, channels_last=True)
    convolutions = [m.weight for m in teacher.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    plain = load_teacher(sources["checkpoint"], torch.device("cpu"), 16).backbone
    assert not all(m.weight.is_contiguous(memory_format=torch.channels_last)
                   for m in plain.modules() if isinstance(m, torch.nn.Conv2d))


def test_onnx_and_precomputed_teachers_report_their_size_and_the_rows_follow_the_indices(sources):
    onnx = load_teacher(sources["onnx"], torch.device("cpu"), 16)
    features = load_teacher(sources["features"], torch.device("cpu"), 16)
    assert onnx.embedding_size == features.embedding_size == TEACHER_SIZE
    rows = np.load(sources["features"])
    got = features(torch.zeros(3, 3, 112, 112), torch.zeros(3, dtype=torch.long), torch.tensor([5, 0, 11])).embeddings
    assert torch.equal(got, torch.from_numpy(rows[[5, 0, 11]]))


@pytest.mark.parametrize("content, message", [
    (b"", "is neither a torch file nor a safetensors file"),
    (b"\x93NUMPY\x01\x00garbage", "is not a readable .npy array"),
    (b"hello, I am a text file\n", "is neither a torch file nor a safetensors file"),
])
def test_a_file_that_is_no_teacher_is_one_line(tmp_path, content, message):
    path = tmp_path / "teacher.bin"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as error:
        load_teacher(path, torch.device("cpu"), 16)
    assert "\n" not in str(error.value) and "distill.teacher=" in str(error.value)


def test_extract_features_refuses_a_missing_dataset_and_align_with_a_dataset(sources, tmp_path, capsys):
    script = load_script("extract_features")
    common = [str(sources["checkpoint"]), "--output", str(tmp_path / "f.npy"), "--device", "cpu"]
    assert script.main([*common, "--dataset", str(tmp_path / "nowhere")]) == 2
    assert "--dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        script.main([*common, "--dataset", str(sources["data"]), "--align"])
    assert exit_.value.code == 2 and "drop --align" in capsys.readouterr().err
    assert not (tmp_path / "f.npy").exists()


def test_features_of_another_dataset_are_refused(sources, tmp_path):
    with pytest.raises(ModelError, match=r"holds float32 \[16, 48\], not one float row for each of the dataset's 20 images"):
        load_teacher(sources["features"], torch.device("cpu"), 20)
    with pytest.raises(ModelError, match="does not exist"):
        load_teacher(tmp_path / "missing.onnx", torch.device("cpu"), 16)


def test_a_bad_teacher_file_on_the_command_line_is_one_line_and_exit_code_2(run_cli, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07\x12not really onnx")
    bad = run_cli(*SMOKE, "distill=feature", f"distill.teacher={junk}")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(f"facetrain: error: {junk} is not a readable ONNX model")
