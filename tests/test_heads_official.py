"""Which official code each head option equals, pinned by facts measured by running that code outside this
repository (values and gradients; no official code is copied here).

arcface_torch's ``recognition/arcface_torch/losses.py`` was run at insightface 7fadd420 (today's; the margin
under ``no_grad`` since 657ae30e) and 5c9f7c47 (just before 657ae30e), on a cosine matrix with one sample at
angle theta to its class: the target logit and its derivative by ``cos(theta)``, s=64, m=0.5.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from facetrain.heads import build_head

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# theta -> (target logit, d target logit / d cos theta)
ARCFACE_TORCH_TODAY = {0.3: (44.589229398218585, 64.0), 1.0: (4.527180906732986, 64.0),
                       2.8: (-63.19870527416735, 64.0), 3.0: (-59.93322798661097, 64.0)}
ARCFACE_TORCH_BEFORE_657AE30E = {0.3: (44.589229398218585, 155.35583957608125), 1.0: (4.527180906732994, 75.86676224758214),
                                 2.8: (-75.64384703812861, 64.0), 3.0: (-78.701137017763, 64.0)}


def _cosine_slope(head_name: str, theta: float, **hparams) -> tuple[float, float]:
    """Target logit and d(target logit)/d(cos theta), read through the head's parts (scores -> target)."""
    head = build_head(head_name, 2, 2, **hparams).double().train()
    cos = torch.tensor([[math.cos(theta)]], dtype=torch.float64, requires_grad=True)
    logit = head.target_logit(cos, torch.ones(1, 2, dtype=torch.float64))[0, 0]
    logit.backward()
    return logit.item(), cos.grad.item()


@pytest.mark.parametrize("theta", sorted(ARCFACE_TORCH_TODAY))
def test_arcface_plain_straight_through_is_todays_arcface_torch(theta):
    value, slope = _cosine_slope("arcface", theta, s=64.0, m=0.5, variant="plain", straight_through=True)
    assert (value, slope) == pytest.approx(ARCFACE_TORCH_TODAY[theta], rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("theta", sorted(ARCFACE_TORCH_BEFORE_657AE30E))
def test_arcface_fallback_is_arcface_torch_before_december_2022(theta):
    value, slope = _cosine_slope("arcface", theta, s=64.0, m=0.5, variant="fallback")
    assert (value, slope) == pytest.approx(ARCFACE_TORCH_BEFORE_657AE30E[theta], rel=1e-9, abs=1e-9)
    assert _cosine_slope("arcface", theta, s=64.0, m=0.5) == pytest.approx((value, slope))  # the default


def test_straight_through_keeps_the_gradient_of_normface_for_every_variant():
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    grads = {}
    for name, hparams in (("normface", {}), ("arcface", {"variant": "fallback", "straight_through": True}),
                          ("arcface", {"variant": "easy", "straight_through": True}),
                          ("combined", {"m1": 0.9, "m2": 0.3, "m3": 0.0, "straight_through": True})):
        torch.manual_seed(0)
        head = build_head(name, 8, 3, **hparams)
        x.grad = None
        head(x, y).logits.gather(1, y.view(-1, 1)).sum().backward()
        grads[str(hparams)] = (x.grad.clone(), head.weight.grad.clone())
    reference = grads.pop("{}")
    for key, value in grads.items():
        torch.testing.assert_close(value, reference, msg=key)


@pytest.mark.parametrize("theta", [0.3, 1.0, 3.0])
def test_combined_straight_through_keeps_the_cosface_subtraction_differentiable(theta):
    value, slope = _cosine_slope("combined", theta, s=64.0, m1=0.9, m2=0.3, m3=0.2, straight_through=True)
    assert value == pytest.approx(64 * (math.cos(0.9 * theta + 0.3) - 0.2), rel=1e-9)
    assert slope == pytest.approx(64.0)  # the angular part passes cos's gradient; - m3 has slope 1
    # m1 = 1, m2 = 0: CosFace, which today's arcface_torch computes with autograd (same value and slope)
    assert _cosine_slope("combined", theta, m1=1.0, m2=0.0, m3=0.4, straight_through=True) == pytest.approx(
        _cosine_slope("cosface", theta, m=0.4))


def test_subcenter_arcface_defaults_to_the_official_plain_margin():
    # the official sub-center code: cos(arccos(cos) + m) at every angle; at theta_y = 3.099 that is
    # 64 * cos(3.599) = -57.4, where the fallback would give 64 * (cos(3.099) - 0.5 sin(0.5)) = -79.3
    assert _cosine_slope("subcenter_arcface", 3.099)[0] == pytest.approx(-57.42, abs=0.01)
    assert _cosine_slope("subcenter_arcface", 3.099, variant="fallback")[0] == pytest.approx(-79.29, abs=0.01)
    assert _config("loss=subcenter_arcface").loss.variant.value == "plain"


def _config(*overrides: str):
    from facetrain.config import register_schemas

    register_schemas()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize(("overrides", "sigma"), [
    ([], 0.05), (["loss.plus=true"], 0.0175), (["loss.kind=cos"], 0.05), (["loss.kind=cos", "loss.plus=true"], 0.02),
    (["loss.plus=true", "loss.sigma=0.03"], 0.03),
])
def test_elasticface_plus_defaults_to_the_official_sigma(overrides, sigma):
    # fdbtrs/ElasticFace 5496ec06 config/config.py: std 0.0175 for ElasticArcFacePlus, 0.02 for ElasticCosFacePlus
    from facetrain.train import hparams

    cfg = _config("loss=elasticface", *overrides)
    assert build_head("elasticface", 4, 3, **hparams(cfg.loss)).sigma == sigma


def test_arcface_presets_say_which_code_they_reproduce():
    for preset in ("ms1mv3_r50_arcface", "ms1mv3_r100_arcface", "ms1mv3_mbf_arcface"):
        text = (CONFIGS / "experiment" / f"{preset}.yaml").read_text()
        assert "657ae30e" in text and "straight_through" in text, preset
        cfg = _config(f"experiment={preset}")
        assert (cfg.loss.variant.value, cfg.loss.straight_through) == ("fallback", False), preset
