"""What a run shows: TensorBoard scalars, histograms, head state, config and hparams; the console line and
progress bars; scripts/compare_runs.py over run directories."""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.utils.tensorboard import SummaryWriter

from facetrain.data.transforms import normalize
from facetrain.parallel.groups import DistInfo
from facetrain.runs.logging import Progress, format_duration, setup_logging
from facetrain.engine.model import FaceModel
from facetrain.runs.tensorboard import LOSS_TAG, accuracy_tag
from facetrain.engine.settings import TrainerSettings
from facetrain.engine.trainer import Trainer
from facetrain.heads import build_head
from tests.test_resilience import Poisoned, TinyFaces

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
STEPS = 6  # one epoch of TinyFaces (24 images) in batches of 4


class FixedEvaluator:
    """Stands in for the verification callback: the accuracies it is given, one per call."""

    def __init__(self, accuracies: list[float]) -> None:
        self.accuracies = iter(accuracies)

    def __call__(self, backbone: torch.nn.Module) -> dict[str, dict[str, float]]:
        return {"toy": {"accuracy": next(self.accuracies), "std": 0.0, "pairs": 10}}


def frozen_trainer(run_dir: Path, head: str, **head_args) -> Trainer:
    """One epoch with lr 0 and no flip: the model never changes, so the logged means can be recomputed."""
    torch.manual_seed(0)
    model = FaceModel(Poisoned(set()), build_head(head, 8, 4, **head_args))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    settings = TrainerSettings(
        run_dir=run_dir, total_steps=STEPS, batch_size=4, seed=0, device=torch.device("cpu"), amp_dtype=None,
        grad_clip=None, log_every=STEPS, num_workers=0, hflip=0.0, channels_last=False, checkpoint_every=0,
        keep_last=0, save_best=True, best_metric=None, max_nonfinite=3, eval_every=3, eval_at_start=True,
        progress_bar=False, config={"loss": {"name": head, **head_args}, "trainer": {"batch_size": 4}})
    return Trainer(model, optimizer, scheduler, TinyFaces(), settings, DistInfo(), FixedEvaluator([0.5, 0.75, 0.7]))


def events(run_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def last(accumulator: EventAccumulator, tag: str) -> float:
    return accumulator.Scalars(tag)[-1].value


def test_tensorboard_holds_the_head_diagnostics_recomputed_by_hand(tmp_path):
    trainer = frozen_trainer(tmp_path, "cosface", s=16.0, m=0.2)
    trainer.fit()
    with torch.no_grad():  # every image once: the epoch's mean equals the mean of the six batch means
        embeddings = trainer.model.backbone(normalize(TinyFaces().images))
        labels = torch.arange(24) % 4
        cos = (F.normalize(embeddings) * F.normalize(trainer.model.head.weight)[labels]).sum(dim=1)
    tb = events(tmp_path)
    assert last(tb, "train/target_logit") == pytest.approx(float((16.0 * (cos - 0.2)).mean()), rel=1e-4)
    assert last(tb, "train/target_angle") == pytest.approx(float(torch.rad2deg(torch.acos(cos)).mean()), rel=1e-4)
    assert last(tb, "train/embedding_norm") == pytest.approx(float(embeddings.norm(dim=1).mean()), rel=1e-4)
    histogram = tb.Histograms("train/embedding_norm")[-1]
    assert histogram.step == STEPS and histogram.histogram_value.num == 4  # the last batch's samples

    assert last(tb, "train/lr") == 0.0 and last(tb, "train/epoch") == 1.0
    assert last(tb, "train/throughput") > 0 and 0.0 <= last(tb, "train/data_wait") <= 1.0
    assert last(tb, LOSS_TAG) == pytest.approx(trainer.report.record.last_loss)
    assert [(e.step, e.value) for e in tb.Scalars(accuracy_tag("toy"))] == [(0, 0.5), (3, 0.75), (6, pytest.approx(0.7))]
    assert [(e.step, e.value) for e in tb.Scalars(accuracy_tag("toy", best=True))] == [(3, 0.75), (6, 0.75)]
    assert "system/gpu_memory_peak_gib" not in tb.Tags()["scalars"]  # CPU run

    config = tb.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "    loss:\n      name: cosface\n      s: 16.0\n" in config
    start = plugin_data_pb2.HParamsPluginData.FromString(tb.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["loss.m"].number_value == pytest.approx(0.2)
    assert last(tb, "hparams/toy/best_accuracy") == 0.75 and last(tb, "hparams/toy/accuracy") == pytest.approx(0.7)


def test_the_untrained_step_0_is_never_the_best(tmp_path, caplog):
    """Best accuracy (metrics.json, TensorBoard's best tag, the hparams, the log) counts evaluations after training
    started, as best.pt does: here step 0 scores highest and the best is still step 3's."""
    trainer = frozen_trainer(tmp_path, "cosface", s=16.0, m=0.2)
    trainer.evaluator = FixedEvaluator([0.9, 0.75, 0.7])
    with caplog.at_level(logging.INFO, logger="facetrain"):
        trainer.fit()
    assert json.loads((tmp_path / "metrics.json").read_text())["best"] == {"toy": {"accuracy": 0.75, "step": 3}}
    tb = events(tmp_path)
    assert [(e.step, e.value) for e in tb.Scalars(accuracy_tag("toy", best=True))] == [(3, 0.75), (6, 0.75)]
    assert last(tb, "hparams/toy/best_accuracy") == 0.75
    assert "step 0 val toy: accuracy 0.9000 +- 0.0000 (10 pairs)\n" in caplog.text
    assert "step 3 val toy: accuracy 0.7500 +- 0.0000 (10 pairs, best 0.7500)" in caplog.text


def test_head_state_is_logged_as_the_head_names_it(tmp_path):
    trainer = frozen_trainer(tmp_path, "adaface")
    trainer.fit()
    head = trainer.model.head
    assert set(head.stats()) == {"batch_mean", "batch_std"}
    tb = events(tmp_path)
    assert last(tb, "head/batch_mean") == pytest.approx(float(head.batch_mean))
    assert last(tb, "head/batch_std") == pytest.approx(float(head.batch_std))
    assert float(head.batch_mean) != 20.0  # the EMA moved during the epoch


def test_head_stats_and_diagnostics_of_other_heads():
    assert set(build_head("curricularface", 8, 4).stats()) == {"t"}
    sphereface = build_head("sphereface", 8, 4)
    assert float(sphereface.stats()["lambda"]) == 1000.0
    assert build_head("arcface", 8, 4).stats() == {}
    subcenter = build_head("subcenter_arcface", 8, 4, k=3)
    embeddings, labels = torch.randn(5, 8), torch.tensor([0, 1, 2, 3, 0])
    angle = subcenter(embeddings, labels).diagnostics["target_angle"]
    nearest = torch.stack([F.cosine_similarity(embeddings[i], subcenter.subcenters[labels[i]], dim=1).max()
                           for i in range(5)])
    assert torch.allclose(angle, torch.rad2deg(torch.acos(nearest)), atol=1e-3)


def test_log_line_goes_to_train_log_with_eta_and_only_on_rank_0(tmp_path):
    setup_logging(tmp_path, is_main=True)
    frozen_trainer(tmp_path, "cosface", s=16.0, m=0.2).fit()
    line = next(line for line in (tmp_path / "train.log").read_text().splitlines() if f"step {STEPS}/{STEPS} " in line)
    assert "epoch 1.00 loss " in line and " lr 0.000e+00 " in line and " img/s data " in line
    assert line.endswith("ETA 0:00:00 (epoch 0:00:00)")
    quiet = tmp_path / "rank1"
    logger = setup_logging(quiet, is_main=False)
    logger.info("step 1/6 ...")
    assert not quiet.exists() and not logger.isEnabledFor(20)


def test_progress_bars_follow_epochs_and_durations_read_like_tqdm(capsys):
    progress = Progress(total_steps=10, steps_per_epoch=4, step=5, enabled=True)  # resumed mid-epoch 2
    assert (progress.run.n, progress.epoch.n, progress.epoch.total, progress.epoch.desc) == (5, 1, 4, "epoch 2/3")
    for step in (6, 7, 8, 9):
        progress.advance(step)
    assert (progress.run.n, progress.epoch.n, progress.epoch.total, progress.epoch.desc) == (9, 1, 2, "epoch 3/3")
    progress.close()
    assert "epoch 2/3:  25%" in capsys.readouterr().err  # drawn on creation (later draws are rate-limited)
    assert format_duration(59.6) == "0:01:00" and format_duration(3 * 86400 + 3725) == "3 days, 1:02:05"


# ---- scripts/compare_runs.py ----------------------------------------------------------------------------
def compare_runs():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPTS / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_runs"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def fake_run(run_dir: Path, losses: list[float], accuracies: dict[str, list[float]]) -> None:
    """A run directory as the trainer leaves it: scalars under the trainer's tags and metrics.json."""
    with SummaryWriter(run_dir / "tensorboard") as writer:
        for step, loss in enumerate(losses, start=1):
            writer.add_scalar(LOSS_TAG, loss, step * 10)
        for target, values in accuracies.items():
            for step, value in enumerate(values):
                writer.add_scalar(accuracy_tag(target), value, step * 20)
                writer.add_scalar(accuracy_tag(target, best=True), max(values[: step + 1]), step * 20)
    best = {t: {"accuracy": max(v), "step": 20 * v.index(max(v))} for t, v in accuracies.items()}
    (run_dir / "metrics.json").write_text(json.dumps({
        "step": 10 * len(losses), "epoch": 1.0, "train_loss": losses[-1],
        "val": {t: {"accuracy": v[-1], "std": 0.01} for t, v in accuracies.items()}, "best": best}))


def test_compare_runs_tables_final_and_best_and_draws_the_curves(tmp_path, capsys):
    arcface, cosface = tmp_path / "arc" / "2026-01-01_00-00-00_aaaa", tmp_path / "cos" / "2026-01-02_00-00-00_bbbb"
    fake_run(arcface, [40.0, 30.0, 20.0], {"lfw": [0.6, 0.9, 0.85], "cfp_fp": [0.55, 0.7, 0.8]})
    fake_run(cosface, [30.0, 25.0], {"lfw": [0.7, 0.8]})
    output = tmp_path / "plots" / "compare.png"
    assert compare_runs().main([str(arcface), str(cosface), "--output", str(output)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "steps", "final", "loss", "lfw", "final", "lfw", "best", "(step)",
                                "cfp_fp", "final", "cfp_fp", "best", "(step)"]
    assert lines[2].split() == ["arc/2026-01-01_00-00-00_aaaa", "30", "20.0000", "0.8500", "0.9000", "(20)",
                                "0.8000", "0.8000", "(40)"]
    assert lines[3].split() == ["cos/2026-01-02_00-00-00_bbbb", "20", "25.0000", "0.8000", "0.8000", "(20)", "-", "-"]
    assert Image.open(output).size == (1800, 480)  # three panels: loss, lfw, cfp_fp

    module = compare_runs()
    curves = module.read_curves(arcface)
    assert curves["loss"] == [(10, 40.0), (20, 30.0), (30, 20.0)]
    assert curves["cfp_fp"] == [(0, pytest.approx(0.55)), (20, pytest.approx(0.7)), (40, pytest.approx(0.8))]
    assert set(curves) == {"loss", "lfw", "cfp_fp"}  # best_accuracy is not a curve of its own


def test_compare_runs_draws_beside_the_runs_by_default(tmp_path, monkeypatch, capsys):
    first, second = tmp_path / "outputs" / "arc" / "run_a", tmp_path / "outputs" / "arc" / "run_b"
    other = tmp_path / "outputs" / "cos" / "run_c"
    for run in (first, second, other):
        fake_run(run, [40.0, 30.0], {"lfw": [0.6, 0.9]})
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert compare_runs().main([str(first), str(second)]) == 0  # runs of one name: in outputs/<name>/
    assert (tmp_path / "outputs" / "arc" / "compare_runs.png").is_file()
    assert capsys.readouterr().out.splitlines()[-1] == f"curves: {(tmp_path / 'outputs' / 'arc' / 'compare_runs.png').resolve()}"
    assert compare_runs().main([str(first), str(other)]) == 0  # runs of two names: in the folder holding both
    assert (tmp_path / "outputs" / "compare_runs.png").is_file()
    assert list((tmp_path / "elsewhere").iterdir()) == []  # never the current folder


def test_compare_runs_names_a_directory_that_is_not_a_run(tmp_path, capsys):
    assert compare_runs().main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"compare_runs: error: {tmp_path} holds no metrics.json; pass the run directories train.py wrote "
        "(outputs/<name>/<timestamp>), of runs that reached an evaluation or a checkpoint")
