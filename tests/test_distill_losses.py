"""The distillation losses: each formula pinned by values worked out by hand, and by values the official code
gives on the same random features (run outside the repository, recorded here):

- ``kl`` and ``mse``: FaceX-Zoo (JDAI-CV/FaceX-Zoo 16b793a7564a4b9308cf94e62bdb2ffacb3a725a),
  ``addition_module/face_lightning/KDF/loss/soft_target.py`` ``SoftTarget(T=4)`` on the logits and ``fitnet.py``
  ``FitNet`` on the L2-normalised embeddings;
- ``rkd``: the RKD authors' code (lenscloth/RKD 0a6c3c0c190722d428322bf71703c0ae86c25242), ``metric/loss.py``
  ``25 * RkdDistance + 50 * RKdAngle`` on the L2-normalised embeddings.

Values and gradient norms agree with theirs to 1e-15 (float64); FaceX-Zoo has no cosine feature loss, so
``feature`` is pinned by its formula only.
"""
from __future__ import annotations

import math

import pytest
import torch

from facetrain.distill.losses import DISTILL_LOSSES, build_distill_loss
from facetrain.errors import ConfigError

N, D, C = 8, 16, 10


def random_inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(N, D, generator=g, dtype=torch.float64)
    t = torch.randn(N, D, generator=g, dtype=torch.float64)
    zs = torch.randn(N, C, generator=g, dtype=torch.float64) * 5
    zt = torch.randn(N, C, generator=g, dtype=torch.float64) * 5
    return s, t, zs, zt


def loss_of(name: str, s: torch.Tensor, t: torch.Tensor, zs: torch.Tensor | None = None,
            zt: torch.Tensor | None = None, **keys: float) -> torch.Tensor:
    zs = torch.zeros(len(s), 2, dtype=s.dtype) if zs is None else zs
    return build_distill_loss(name, s.shape[1], t.shape[1], **keys)(s, t, torch.zeros(len(s), dtype=torch.long), zs, zt)


@pytest.mark.parametrize("name, keys, value, grad_norm", [
    ("kl", {"temperature": 4.0}, 18.302855089536695, 0.7614115601971378),  # FaceX-Zoo SoftTarget(4)
    ("mse", {"alpha": 1.0}, 0.127158483218707, 0.0114711851785388),  # FaceX-Zoo FitNet, normalised inputs
    ("rkd", {}, 1.069385626374973, 0.41458820197854745),  # RKD 25 * distance + 50 * angle
    ("feature", {}, 1.0172678657496563, 0.0917694814283104),
])
def test_each_loss_equals_the_official_code_on_random_features(name, keys, value, grad_norm):
    s, t, zs, zt = random_inputs()
    s.requires_grad_()
    zs.requires_grad_()
    loss = loss_of(name, s, t, zs, zt, **keys)
    loss.backward()
    assert loss.item() == pytest.approx(value, rel=1e-12)
    grad = zs.grad if name == "kl" else s.grad
    assert grad.norm().item() == pytest.approx(grad_norm, rel=1e-12)


def test_the_rkd_parts_equal_the_official_distance_and_angle_losses():
    s, t, _, _ = random_inputs()
    assert loss_of("rkd", s, t, distance_weight=1.0, angle_weight=0.0).item() == pytest.approx(0.01235079278828527, rel=1e-12)
    assert loss_of("rkd", s, t, distance_weight=0.0, angle_weight=1.0).item() == pytest.approx(0.015212316133356827, rel=1e-12)


def test_feature_loss_is_one_minus_the_cosine_averaged_over_the_batch():
    s = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 5.0], [1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    expected = (1.0 + (1 - 1 / math.sqrt(2)) + 0.0) / 3
    assert loss_of("feature", s, t).item() == pytest.approx(expected, abs=1e-12)


def test_mse_is_alpha_times_the_mean_squared_difference_of_the_normalised_embeddings():
    s = torch.tensor([[1.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 5.0], [1.0, 1.0]], dtype=torch.float64)
    # sample 1: (1-0)^2 + (0-1)^2 = 2; sample 2: (1-1/sqrt2)^2 + (1/sqrt2)^2 = 2 - sqrt2; mean over 4 numbers
    expected = (2.0 + 2 - math.sqrt(2)) / 4
    assert loss_of("mse", s, t, alpha=1.0).item() == pytest.approx(expected, abs=1e-12)
    assert loss_of("mse", s, t, alpha=3.0).item() == pytest.approx(3 * expected, abs=1e-12)


def test_kl_is_t_squared_times_the_divergence_of_the_softened_distributions():
    t_ = 2.0
    student = torch.zeros(1, 2, dtype=torch.float64)  # softmax(0/2) = (1/2, 1/2)
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]], dtype=torch.float64)  # softmax(/2) = (3/4, 1/4)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    s = torch.zeros(1, 4, dtype=torch.float64)
    assert loss_of("kl", s, s, student, teacher, temperature=t_).item() == pytest.approx(t_ * t_ * kl, abs=1e-12)


def test_kl_without_the_teachers_logits_is_a_one_line_error():
    s, t, zs, _ = random_inputs()
    with pytest.raises(ConfigError, match="has no head"):
        loss_of("kl", s, t, zs, None)


def test_rkd_distance_term_by_hand_on_three_points():
    e1, e2, e3 = torch.eye(3, dtype=torch.float64)
    teacher = torch.stack([e1, e2, e3])  # every distance sqrt(2): normalised, all 1
    student = torch.stack([e1, e2, (e1 + e2) / math.sqrt(2)])
    near = math.sqrt(2 - math.sqrt(2))
    mean = (math.sqrt(2) + 2 * near) / 3
    differences = [math.sqrt(2) / mean - 1, near / mean - 1, near / mean - 1]
    expected = 2 * sum(0.5 * d * d for d in differences) / 9  # smooth L1 (|d| < 1), both orders, mean over 3 x 3
    assert loss_of("rkd", student, teacher, distance_weight=1.0, angle_weight=0.0).item() == pytest.approx(expected, abs=1e-12)


def test_rkd_angle_term_by_hand_on_three_points():
    e1, e2, e3 = torch.eye(3, dtype=torch.float64)
    teacher = torch.stack([e1, e2, e3])  # an equilateral triangle: every angle 60 degrees
    student = torch.stack([e1, e2, (e1 + e2) / math.sqrt(2)])  # isosceles, apex at the third point
    apex = math.acos((1 - math.sqrt(2)) / (2 - math.sqrt(2)))
    base = (math.pi - apex) / 2
    # of the 27 (anchor, b, c) triples only the 6 with b != c, both != anchor hold an angle; b == c gives 1 = 1
    differences = [math.cos(base) - 0.5] * 4 + [math.cos(apex) - 0.5] * 2
    expected = sum(0.5 * d * d if abs(d) < 1 else abs(d) - 0.5 for d in differences) / 27
    assert loss_of("rkd", student, teacher, distance_weight=0.0, angle_weight=1.0).item() == pytest.approx(expected, abs=1e-12)


def test_rkd_is_zero_for_a_teacher_of_another_size_with_the_same_geometry():
    s, _, _, _ = random_inputs()
    rotation, _ = torch.linalg.qr(torch.randn(24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    teacher = torch.cat([s, torch.zeros(N, 8, dtype=torch.float64)], dim=1) @ rotation  # 24-d, same distances
    loss = build_distill_loss("rkd", D, 24)
    assert loss.projection is None
    assert loss(s, teacher * 7.0, torch.zeros(N, dtype=torch.long), torch.zeros(N, 2)).item() == pytest.approx(0.0, abs=1e-12)


def test_a_projection_maps_the_student_to_the_teachers_size_only_where_the_loss_compares_coordinates():
    for name, keys in (("feature", {}), ("mse", {"alpha": 1.0})):
        loss = build_distill_loss(name, 128, 512, **keys)
        assert loss.projection.weight.shape == (512, 128)
        assert "projection.weight" in loss.state_dict()
        student = torch.randn(4, 128, requires_grad=True)
        loss(student, torch.randn(4, 512), torch.zeros(4, dtype=torch.long), torch.zeros(4, 2)).backward()
        assert loss.projection.weight.grad is not None and student.grad is not None
        assert build_distill_loss(name, 512, 512, **keys).projection is None
    assert build_distill_loss("kl", 128, 512).projection is None


def test_losses_run_in_fp32_under_bf16_autocast():
    s = torch.randn(6, 32)
    t = torch.randn(6, 32).bfloat16()
    for name, keys in (("feature", {}), ("mse", {"alpha": 1.0}), ("rkd", {})):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = build_distill_loss(name, 32, 32, **keys)(s.bfloat16(), t, torch.zeros(6, dtype=torch.long), torch.zeros(6, 2))
        assert value.dtype == torch.float32


def test_the_registry_names_every_loss_and_refuses_an_unknown_one():
    assert {"feature", "mse", "kl", "rkd"} <= set(DISTILL_LOSSES.names())
    with pytest.raises(ConfigError, match="unknown distillation loss 'nope'"):
        build_distill_loss("nope", 8, 8)


@pytest.mark.parametrize("name, keys", [("mse", {"alpha": 0.0}), ("kl", {"temperature": -1.0}),
                                        ("rkd", {"distance_weight": 0.0, "angle_weight": 0.0})])
def test_bad_loss_keys_are_one_line_errors(name, keys):
    with pytest.raises(ConfigError, match="distill"):
        build_distill_loss(name, 8, 8, **keys)
