"""Mixed precision as arcface_torch runs it, driven by CPU autocast: the embedding layer in fp32, the
GradScaler's growth interval from the config; a resume in another precision starts the loss scale afresh; a
model gone non-finite is never evaluated; SphereFace's annealing counts optimizer steps under gradient
accumulation."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import pytest
import torch

from facetrain.backbones.iresnet import IResNet
from facetrain.backbones.mobilefacenet import MobileFaceNet
from facetrain.runs.checkpoint import load_newest_valid
from facetrain.engine.nonfinite import NonFiniteError
from facetrain.engine.trainer import Trainer
from facetrain.config.checks import check_config
from facetrain.errors import ConfigError
from tests.test_resilience import _composed
from tests.trainer_helpers import make_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _input_dtypes(model: torch.nn.Module, modules: dict[str, torch.nn.Module], dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The dtype each of ``modules`` receives and returns in a forward under CPU autocast to ``dtype``."""
    seen = {}
    for name, module in modules.items():
        module.register_forward_hook(lambda m, args, out, name=name: seen.update({name: (args[0].dtype, out.dtype)}))
    with torch.autocast("cpu", dtype=dtype):
        embedding = model.train()(torch.randn(4, 3, 112, 112))
    seen["embedding"] = (embedding.dtype, embedding.dtype)
    return seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_iresnet_embedding_layer_runs_in_fp32_under_autocast(dtype):
    model = IResNet((1, 1, 1, 1))
    seen = _input_dtypes(model, {"stem": model.stem[0], "fc": model.output.fc, "features": model.output.features}, dtype)
    assert seen["stem"][1] == dtype  # the body stays in the autocast dtype
    assert seen["fc"] == seen["features"] == seen["embedding"] == (torch.float32, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mobilefacenet_last_conv_gdc_and_embedding_run_in_fp32_under_autocast(dtype):
    model = MobileFaceNet(blocks=(1, 1, 1, 1), scale=1)
    last_conv = model.body[-1][0]
    seen = _input_dtypes(model, {"first": model.body[0][0], "last_conv": last_conv, "gdc": model.gdc[0], "fc": model.fc}, dtype)
    assert seen["first"][1] == dtype
    assert seen["last_conv"] == seen["gdc"] == seen["fc"] == seen["embedding"] == (torch.float32, torch.float32)
    # the same weights in fp32 give the same embedding from the same last feature map
    features = {}
    last_conv.register_forward_hook(lambda m, args, out: features.update(x=args[0]))
    with torch.autocast("cpu", dtype=dtype):
        embedding = model.eval()(torch.randn(2, 3, 112, 112))
    expected = model.features(model.fc(torch.flatten(model.gdc(model.body[-1](features["x"])), 1)))
    torch.testing.assert_close(embedding, expected, rtol=0, atol=0)


def test_loss_scale_growth_interval_is_a_config_key(tmp_path):
    assert _composed("experiment=smoke").trainer.loss_scale_growth_interval == 100  # arcface_torch's
    trainer = make_trainer(tmp_path, amp_dtype=torch.float16, growth_interval=7)
    assert trainer.scaler.get_growth_interval() == 7 and trainer.scaler.get_scale() == 2.0**16
    with pytest.raises(ConfigError, match="trainer.loss_scale_growth_interval=0 is out of range"):
        check_config(_composed("experiment=smoke", "trainer.loss_scale_growth_interval=0"))


def test_a_model_gone_non_finite_stops_before_evaluation_with_facetrain_s_line(tmp_path):
    trainer = make_trainer(tmp_path, total_steps=8)  # backbone: conv -> batch norm -> ...
    conv = trainer.model.backbone[0]
    calls = []
    # the training forward of step 3 goes NaN: that step is skipped, but batch norm's running mean took the NaN
    conv.register_forward_hook(lambda m, args, out: out * float("nan") if m.training and trainer.step == 2 else None)

    def evaluator(backbone: torch.nn.Module) -> dict:
        """As the verification callback: embeddings of fixed images, which scikit-learn would refuse if NaN."""
        calls.append(1)
        with torch.no_grad():
            if not torch.isfinite(backbone.eval()(torch.zeros(2, 3, 6, 6))).all():
                raise ValueError("Input contains NaN")
        backbone.train()
        return {"toy": {"accuracy": 0.5, "std": 0.0, "pairs": 2}}

    trainer.evaluator, trainer.s.eval_every = evaluator, 2
    with pytest.raises(NonFiniteError) as caught:
        trainer.fit()
    message = str(caught.value)
    assert message.startswith("at step 4 the model holds NaN/Inf in backbone.1.running_mean"), message
    assert "it was not evaluated" in message and "lower optimizer.lr" in message
    assert len(calls) == 1  # at step 2, before the NaN forward of step 3; never on the poisoned model


def test_sphereface_anneals_once_per_optimizer_step_under_grad_accum(tmp_path):
    trainer = make_trainer(tmp_path, total_steps=3, grad_accum=2, loss="sphereface", m=4)  # sharded: a wrapped head
    trainer.fit()
    assert trainer.model.head.inner.iteration.item() == 3  # 6 micro-batches, 3 optimizer steps
    assert make_trainer(Path(tmp_path / "plain"), sharded=False, loss="sphereface", m=4).model.head.iteration.item() == 0


FP16, BF16, FP32 = torch.float16, torch.bfloat16, None


def _resumed(tmp_path: Path, saved: Optional[torch.dtype], resumed: Optional[torch.dtype], recorded: bool,
             caplog: pytest.LogCaptureFixture) -> tuple[Trainer, float]:
    """A 3-step run in ``saved`` precision (fp16: the scale moving at every step), resumed in ``resumed``,
    and the saved run's last loss scale; ``recorded=False`` loads its checkpoint as one written before the
    precision was saved."""
    first = make_trainer(tmp_path, total_steps=3, amp_dtype=saved, growth_interval=1, sharded=False)
    first.fit()
    state = load_newest_valid(tmp_path / "checkpoints")[1]
    if not recorded:
        state.pop("precision", None)
    trainer = make_trainer(tmp_path, total_steps=6, amp_dtype=resumed, sharded=False)
    with caplog.at_level(logging.INFO, logger="facetrain"):
        trainer.load_state_dict(state)
    return trainer, first.scaler.get_scale()


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "inferred"])
@pytest.mark.parametrize(("saved", "resumed", "scale", "told"), [
    (BF16, FP16, 2.0**16, "bf16"),  # precision=auto, a bf16 job re-queued on a GPU without bf16: not 1
    (FP32, FP16, 2.0**16, "fp32"),
    (FP16, BF16, 1.0, "fp16"),  # the fixed scale of bf16, never the fp16 run's
    (FP16, FP32, 1.0, "fp16"),
])
def test_a_resume_in_another_precision_starts_the_loss_scale_afresh(tmp_path, caplog, saved, resumed, scale, told,
                                                                    recorded):
    trainer, saved_scale = _resumed(tmp_path, saved, resumed, recorded, caplog)
    assert saved_scale != scale and trainer.scaler.get_scale() == scale and trainer.scaler.get_growth_interval() == 100
    if not recorded and told != "fp16":
        told = "fp32 or bf16"  # a scale fixed at 1 that never grew: all an older checkpoint tells
    assert f"resume: the checkpoint was trained in {told}, this run in " in caplog.text
    assert "the loss scale starts afresh" in caplog.text


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "inferred"])
def test_a_resume_in_the_same_precision_continues_the_loss_scale(tmp_path, caplog, recorded):
    trainer, saved_scale = _resumed(tmp_path, FP16, FP16, recorded, caplog)
    assert trainer.scaler.get_scale() == saved_scale != 2.0**16  # moved at each of the 3 steps
    assert trainer.scaler.get_growth_interval() == 1  # the saved scaler's, as before
    assert "starts afresh" not in caplog.text
