"""Head formulas pinned numerically on hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from facetrain.heads import build_head


def _head_with_angle(name: str, theta: float, **hparams):
    """A 2-class head whose class-0 centre sits at angle ``theta`` from the embedding (1, 0)."""
    head = build_head(name, embedding_size=2, num_classes=2, **hparams)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[math.cos(theta), math.sin(theta)], [0.0, 1.0]]))
    return head, torch.tensor([[3.0, 0.0]]), torch.tensor([0])


@pytest.mark.parametrize("theta", [0.1, 1.0, 2.0])
def test_arcface_target_is_s_cos_theta_plus_m(theta):
    head, x, y = _head_with_angle("arcface", theta, s=64.0, m=0.5, variant="plain")
    logits = head(x, y).logits
    assert logits[0, 0].item() == pytest.approx(64 * math.cos(theta + 0.5), abs=1e-4)
    assert logits[0, 1].item() == pytest.approx(64 * math.cos(math.pi / 2), abs=1e-4)


def test_arcface_fallback_beyond_pi_minus_m():
    theta = 3.0  # theta + m > pi
    head, x, y = _head_with_angle("arcface", theta, s=64.0, m=0.5, variant="fallback")
    expected = 64 * (math.cos(theta) - 0.5 * math.sin(0.5))
    assert head(x, y).logits[0, 0].item() == pytest.approx(expected, abs=1e-4)
    head, x, y = _head_with_angle("arcface", 1.0, s=64.0, m=0.5, variant="fallback")
    assert head(x, y).logits[0, 0].item() == pytest.approx(64 * math.cos(1.5), abs=1e-4)


def test_arcface_easy_keeps_cos_for_obtuse_angles():
    head, x, y = _head_with_angle("arcface", 2.0, s=64.0, m=0.5, variant="easy")
    assert head(x, y).logits[0, 0].item() == pytest.approx(64 * math.cos(2.0), abs=1e-4)


def test_cosface_target_is_s_times_cos_minus_m():
    head, x, y = _head_with_angle("cosface", 0.7, s=30.0, m=0.35)
    assert head(x, y).logits[0, 0].item() == pytest.approx(30 * (math.cos(0.7) - 0.35), abs=1e-4)


def test_softmax_is_linear_with_bias():
    head = build_head("softmax", 3, 4, bias=True)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    out = head(x, y)
    torch.testing.assert_close(out.logits, x @ head.weight.T + head.bias)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))


@pytest.mark.parametrize("name", ["arcface", "cosface", "softmax"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_no_nan_at_cos_plus_minus_one(name, sign):
    head = build_head(name, 4, 3)
    x = (sign * head.weight[1].detach().clone()).unsqueeze(0).requires_grad_(True)
    out = head(x, torch.tensor([1]))
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


def test_margin_heads_compute_in_fp32_under_autocast():
    head = build_head("arcface", 8, 5)
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x.bfloat16(), torch.tensor([0, 1, 2, 3]))
    assert out.logits.dtype == torch.float32


def test_unknown_head_lists_names():
    with pytest.raises(Exception, match="choose one of: arcface, cosface, softmax"):
        build_head("nope", 8, 5)
