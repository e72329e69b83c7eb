"""The command line: overrides, printed config, and one-line errors for bad input."""
from __future__ import annotations

import pytest

from facetrain.errors import ConfigError
from facetrain.train import select_amp_dtype, select_device


def test_cfg_job_prints_resolved_overrides(run_cli):
    result = run_cli("loss=cosface", "backbone=r50", "trainer.batch_size=64", "optimizer.lr=0.05", "--cfg", "job")
    assert result.returncode == 0, result.stderr
    assert "name: cosface" in result.stdout and "name: r50" in result.stdout
    assert "batch_size: 64" in result.stdout and "lr: 0.05" in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trainer.bach_size=4"], "unknown config key 'trainer.bach_size'"),
        (["loss=nope"], "unknown loss 'nope'; choose one of: adaface, arcface, center, combined, cosface,"),
        (["backbone=r9"], "unknown backbone 'r9'; choose one of:"),
        (["trainer.batch_size=abc"], "trainer.batch_size=abc is invalid: Value 'abc' of type 'str' could not be "
                                     "converted to Integer"),
        (["loss.variant=weird"], "loss.variant=weird is invalid: Invalid value 'weird', expected one of [fallback"),
        (["dataset=rec", "dataset.root=/no/such/folder"], "dataset root /no/such/folder does not exist"),
        (["dataset=rec"], "dataset.root is not set"),
        (["resume=/no/such/run"], "resume=/no/such/run is not a directory"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(run_cli, args, expected):
    result = run_cli(*args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert errors == [lines[-1]] and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].startswith("facetrain: error: ") and expected in lines[-1], lines[-1]
    assert ";" in lines[-1], "the message names a fix after the problem"


def _random_init_backbone(tmp_path):
    import random

    (tmp_path / "random.pt").write_bytes(random.Random(0).randbytes(2000))
    return ["experiment=smoke", f"init.backbone={tmp_path / 'random.pt'}"]


def _one_identity(tmp_path):
    from tests.data_helpers import write_image_folder

    write_image_folder(tmp_path / "faces", [3])
    return ["experiment=smoke", "dataset=imagefolder", f"dataset.root={tmp_path / 'faces'}"]


def _preset_key_for_another_scheduler(tmp_path):
    return ["experiment=finetune", "scheduler=poly"]


def _bin_folder_as_synthetic_root(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_pairs.bin").write_bytes(b"pairs")
    return ["eval.targets=[my_pairs]", f"dataset.root={tmp_path / 'mine'}"]


@pytest.mark.parametrize(("setup", "expected"), [
    (_random_init_backbone, "random.pt is neither a torch file nor a safetensors file (it starts with b'"),
    (_one_identity, "faces holds 1 identity: training needs at least two"),
    (_preset_key_for_another_scheduler, "config key 'scheduler.min_lr_ratio' is set by experiment=finetune "
                                        "(configs/experiment/finetune.yaml), but scheduler=poly has no such key; "
                                        "use the scheduler that experiment=finetune is written for, or drop"),
    (_bin_folder_as_synthetic_root, "mine already holds other files, but dataset=synthetic generates its images into "
                                    "dataset.root; leave dataset.root unset for the synthetic data, and name a .bin of "
                                    "yours by its path: eval.targets=["),
], ids=["init_random_bytes", "one_identity", "preset_key", "synthetic_root"])
def test_bad_files_data_and_presets_stop_with_one_line_and_exit_2(run_cli, tmp_path, setup, expected):
    result = run_cli(*setup(tmp_path))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in lines if "error" in line.lower()] == [lines[-1]], result.stderr
    assert lines[-1].startswith("facetrain: error: ") and expected in lines[-1], lines[-1]
    assert not list((tmp_path / "outputs").glob("*/*/checkpoints/*.pt")), "nothing was trained"


def test_cuda_requested_without_gpu_is_a_config_error(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
        select_device("cuda", 0)
    assert select_device("auto", 0).type == "cpu"


def test_precision_choice():
    import torch

    cpu = torch.device("cpu")
    assert select_amp_dtype("auto", cpu) is None
    assert select_amp_dtype("bf16", cpu) is torch.bfloat16
    assert select_amp_dtype("fp16", cpu) is torch.float16  # CPU autocast: how the tests drive fp16 loss scaling
    assert select_amp_dtype("fp32", cpu) is None
