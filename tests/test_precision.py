"""Mixed precision as arcface_torch runs it, driven by CPU autocast: the embedding layer in fp32, the
GradScaler's growth interval from the config; a model gone non-finite is never evaluated; SphereFace's
annealing counts optimizer steps under gradient accumulation."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from facetrain.backbones.iresnet import IResNet
from facetrain.backbones.mobilefacenet import MobileFaceNet
from facetrain.engine.nonfinite import NonFiniteError
from facetrain.config_checks import check_config
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
