"""Head formulas pinned numerically on hand-computed cases; gradients, buffers and state (DDP statistics:
test_heads_ddp.py)."""
from __future__ import annotations

import inspect
import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from facetrain.heads import HEADS, build_head

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest

LOSS_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "loss"
NAMES = HEADS.names()
NEAR_0, NEAR_PI = 1e-3, math.pi - 1e-3
ANGLES = [NEAR_0, 0.1, 1.0, 2.0, 3.0, NEAR_PI]


def approx(expected: float):
    """fp32 tolerance: near theta = pi a cosine rounded to fp32 fixes theta only to about 1e-4."""
    return pytest.approx(expected, rel=1e-4, abs=2e-3)


def _head_with_angle(name: str, theta: float, phi: float = math.pi / 2, norm: float = 3.0, **hparams):
    """A 2-class head; the embedding ``(norm, 0)`` is at angle ``theta`` from class 0 and ``phi`` from class 1."""
    head = build_head(name, embedding_size=2, num_classes=2, **hparams)
    centres = torch.tensor([[math.cos(theta), math.sin(theta)], [math.cos(phi), math.sin(phi)]])
    with torch.no_grad():
        head.weight.copy_(centres.repeat_interleave(head.weight.shape[0] // 2, dim=0))
    return head, torch.tensor([[norm, 0.0]]), torch.tensor([0])


def _target(name: str, theta: float, **hparams) -> float:
    head, x, y = _head_with_angle(name, theta, **hparams)
    return head.eval()(x, y).logits[0, 0].item()


# ---- logits against the formulas --------------------------------------------------------------------
@pytest.mark.parametrize("theta", ANGLES)
def test_normface_and_cosface(theta):
    assert _target("normface", theta, s=30.0) == approx(30 * math.cos(theta))
    assert _target("cosface", theta, s=30.0, m=0.35) == approx(30 * (math.cos(theta) - 0.35))


@pytest.mark.parametrize("theta", ANGLES)
def test_arcface_variants(theta):
    plain = 64 * math.cos(theta + 0.5)
    fallback = plain if theta + 0.5 <= math.pi else 64 * (math.cos(theta) - 0.5 * math.sin(0.5))
    easy = plain if math.cos(theta) > 0 else 64 * math.cos(theta)
    for variant, expected in (("plain", plain), ("fallback", fallback), ("easy", easy)):
        assert _target("arcface", theta, s=64.0, m=0.5, variant=variant) == approx(expected), variant
    head, x, y = _head_with_angle("arcface", theta)
    assert head(x, y).logits[0, 1].item() == approx(0.0)  # non-target: s*cos(pi/2)


@pytest.mark.parametrize("theta", ANGLES)
def test_combined_margin_honours_all_three(theta):
    expected = 64 * (math.cos(0.9 * theta + 0.3) - 0.2)
    assert _target("combined", theta, s=64.0, m1=0.9, m2=0.3, m3=0.2) == approx(expected)


@pytest.mark.parametrize("theta", ANGLES)
@pytest.mark.parametrize("straight_through", [False, True])
def test_x2softmax_target_is_quadratic_in_theta(theta, straight_through):
    expected = 64 * (-0.9 * (theta - 0.1) ** 2 + 0.65)
    value = _target("x2softmax", theta, s=64.0, a=-0.9, h=0.1, k=0.65, straight_through=straight_through)
    assert value == approx(expected)


def test_x2softmax_straight_through_has_the_gradient_of_cos():
    x = torch.randn(4, 6, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    grads = {}
    for name, hparams in (("x2softmax", {"straight_through": True}), ("normface", {})):
        torch.manual_seed(0)
        head = build_head(name, 6, 3, **hparams)
        x.grad = None
        head(x, y).logits.gather(1, y.view(-1, 1)).sum().backward()
        grads[name] = (x.grad.clone(), head.weight.grad.clone())
    torch.testing.assert_close(grads["x2softmax"], grads["normface"])


def _psi(theta: float, m: int = 4) -> float:
    k = min(math.floor(m * theta / math.pi), m - 1)
    return (-1) ** k * math.cos(m * theta) - 2 * k


@pytest.mark.parametrize("theta", ANGLES)
@pytest.mark.parametrize("iteration", [0, 100, 10**6])
def test_sphereface_annealed_target(theta, iteration):
    head, x, y = _head_with_angle("sphereface", theta, norm=2.5)
    head.iteration.fill_(iteration)
    lam = max(5.0, 1000.0 * (1 + 0.12 * iteration) ** -1.0)
    expected = 2.5 * (lam * math.cos(theta) + _psi(theta)) / (1 + lam)
    logits = head.eval()(x, y).logits
    assert logits[0, 0].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert logits[0, 1].item() == pytest.approx(0.0, abs=1e-5)  # ||x|| cos(pi/2), no scale


def test_sphereface_psi_is_continuous_and_decreasing():
    from facetrain.heads.sphereface import psi

    theta = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    values = psi(torch.cos(theta), 4)
    assert (values.diff() <= 1e-12).all()
    assert values[0].item() == pytest.approx(1.0) and values[-1].item() == pytest.approx(-7.0)
    torch.testing.assert_close(values, torch.tensor([_psi(t) for t in theta.tolist()], dtype=torch.float64))


@pytest.mark.parametrize("theta", ANGLES)
@pytest.mark.parametrize("norm", [5.0, 20.0, 60.0, 400.0])
def test_adaface_target(theta, norm):
    z = max(-1.0, min(1.0, 0.333 * (min(norm, 100.0) - 20.0) / (100.0 + 1e-3)))
    angle = min(max(theta - 0.4 * z, 0.0), math.pi)
    expected = 64 * (math.cos(angle) - 0.4 * (1 + z))
    assert _target("adaface", theta, norm=norm) == approx(expected)


@pytest.mark.parametrize("theta", ANGLES)
@pytest.mark.parametrize("norm", [3.0, 40.0, 200.0])
@pytest.mark.parametrize("variant", ["easy", "plain"])
def test_magface_target_and_regulariser(theta, norm, variant):
    a = min(max(norm, 10.0), 110.0)
    m = 0.45 + 0.35 * (a - 10.0) / 100.0
    expected = math.cos(theta + m)
    if variant == "easy" and math.cos(theta) <= 0:
        expected = math.cos(theta)
    head, x, y = _head_with_angle("magface", theta, norm=norm, variant=variant)
    out = head(x, y)
    assert out.logits[0, 0].item() == approx(64 * expected)
    regulariser = 35.0 * (a / 110.0**2 + 1.0 / a)
    assert out.loss.item() == pytest.approx(F.cross_entropy(out.logits, y).item() + regulariser, rel=1e-5)


@pytest.mark.parametrize(("theta", "phi", "hard"), [(1.2, 1.0, True), (0.2, 1.5, False), (NEAR_PI, 0.5, True)])
def test_curricularface_reweights_hard_negatives(theta, phi, hard):
    head, x, y = _head_with_angle("curricularface", theta, phi=phi)
    head.t.fill_(0.3)
    logits = head.eval()(x, y).logits
    target = math.cos(theta + 0.5) if theta + 0.5 <= math.pi else math.cos(theta) - 0.5 * math.sin(0.5)
    negative = math.cos(phi) * (0.3 + math.cos(phi)) if hard else math.cos(phi)
    assert logits[0, 0].item() == approx(64 * target)
    assert logits[0, 1].item() == approx(64 * negative)


@pytest.mark.parametrize("theta", ANGLES)
def test_elasticface_uses_the_mean_margin_outside_training(theta):
    assert _target("elasticface", theta, kind="arc") == approx(64 * math.cos(theta + 0.5))
    assert _target("elasticface", theta, kind="cos") == approx(64 * (math.cos(theta) - 0.35))


def test_elasticface_draws_margins_when_training():
    head = build_head("elasticface", 4, 3, kind="cos", m=0.35, sigma=0.05).train()
    cos = torch.rand(4096, 1) * 2 - 1
    margins = head.margins(cos)
    assert margins.shape == cos.shape
    assert margins.mean().item() == pytest.approx(0.35, abs=5e-3)
    assert margins.std().item() == pytest.approx(0.05, abs=5e-3)


@pytest.mark.parametrize("assignment", ["paper", "official"])
def test_elasticface_plus_assignment(assignment):
    head = build_head("elasticface", 4, 3, plus=True, plus_assignment=assignment, sigma=0.1).train()
    cos = torch.tensor([[0.1], [0.9], [-0.5], [0.4], [0.7]])
    torch.manual_seed(3)
    margins = head.margins(cos).flatten()
    torch.manual_seed(3)
    ascending = torch.normal(0.5, 0.1, cos.shape).flatten().sort().values
    ranking = cos.flatten().argsort(descending=True)  # [1, 4, 3, 0, 2]
    if assignment == "paper":  # closest to its centre -> smallest margin
        torch.testing.assert_close(margins[ranking], ascending)
        assert (margins.argsort() == ranking).all()
    else:
        torch.testing.assert_close(margins, ascending[ranking])


@pytest.mark.parametrize("theta", ANGLES)
def test_subcenter_arcface_uses_the_nearest_subcenter(theta):
    head = build_head("subcenter_arcface", 2, 2, k=3, variant="plain")
    assert head.weight.shape == (6, 2) and head.subcenters.shape == (2, 3, 2)
    farther = [min(theta + 0.7, math.pi), min(theta + 1.4, math.pi)]
    angles = [farther[0], theta, farther[1], 2.0, 0.3, 2.5]  # class 0: rows 0-2, class 1: rows 3-5
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[math.cos(a), math.sin(a)] for a in angles]))
    logits = head(torch.tensor([[2.0, 0.0]]), torch.tensor([0])).logits
    assert logits[0, 0].item() == approx(64 * math.cos(theta + 0.5))
    assert logits[0, 1].item() == approx(64 * math.cos(0.3))
    torch.testing.assert_close(head.subcenters[1, 1], head.weight[4])


def test_softmax_is_linear_with_bias():
    head = build_head("softmax", 3, 4, bias=True)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    out = head(x, y)
    torch.testing.assert_close(out.logits, x @ head.weight.T + head.bias)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y))


@pytest.mark.parametrize("base", ["softmax", "arcface"])
def test_center_loss_adds_half_mean_squared_distance_to_the_base_loss(base):
    torch.manual_seed(0)
    head = build_head("center", 3, 4, lambda_c=0.01, base=base, base_args={"s": 30.0} if base == "arcface" else {})
    assert head.weight is head.base.weight and "weight" not in dict(head.named_parameters())
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])
    out = head.eval()(x, y)
    torch.testing.assert_close(out.logits, head.base(x, y).logits)
    pull = 0.5 * ((x - head.centers[y]) ** 2).sum(1).mean()
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, y) + 0.01 * pull)


def test_center_loss_refuses_to_wrap_itself():
    with pytest.raises(ValueError, match="cannot wrap itself"):
        build_head("center", 3, 4, base="center")


# ---- buffers ----------------------------------------------------------------------------------------
def test_center_update_rule():
    head = build_head("center", 2, 3, alpha=0.5, lambda_c=100.0)
    head.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))
    x = torch.tensor([[2.0, 0.0], [4.0, 2.0], [3.0, 1.0]])
    head.train()(x, torch.tensor([0, 0, 1]))
    # class 0: sum(c - x) = (-6, -2), n = 2 -> c -= 0.5 * (-6, -2) / 3; class 1: (-2, 0) / 2; class 2 unseen
    expected = torch.tensor([[1.0, 1.0 / 3.0], [1.5, 1.0], [5.0, 5.0]])
    torch.testing.assert_close(head.centers, expected)  # independent of lambda_c
    head.eval()(x, torch.tensor([2, 2, 2]))
    torch.testing.assert_close(head.centers, expected)  # no update outside training


def test_adaface_batch_statistics_ema():
    head = build_head("adaface", 2, 2, t_alpha=0.01).train()
    x = torch.tensor([[3.0, 4.0], [0.0, 10.0], [30.0, 0.0]])  # norms 5, 10, 30
    head(x, torch.tensor([0, 1, 0]))
    norms = torch.tensor([5.0, 10.0, 30.0])
    assert head.batch_mean.item() == pytest.approx(0.99 * 20 + 0.01 * norms.mean().item(), rel=1e-6)
    assert head.batch_std.item() == pytest.approx(0.99 * 100 + 0.01 * norms.std().item(), rel=1e-6)


def test_curricularface_t_ema():
    head, x, y = _head_with_angle("curricularface", 1.0)
    head.train()(x, y)
    assert head.t.item() == pytest.approx(0.01 * math.cos(1.0), rel=1e-5)
    head(x, y)
    assert head.t.item() == pytest.approx(0.01 * math.cos(1.0) * (1 + 0.99), rel=1e-5)


def test_sphereface_anneals_per_optimizer_step_not_per_forward():
    theta, norm = 0.5, 3.0
    head, x, y = _head_with_angle("sphereface", theta, norm=norm)
    for step in (1, 2, 3):  # two micro-batches per optimizer step (trainer.grad_accum=2)
        lam = max(5.0, 1000.0 / (1 + 0.12 * step))  # the step being trained, 1-based, as the Caffe layer counts
        expected = norm * (lam * math.cos(theta) + _psi(theta)) / (1 + lam)
        for _ in range(2):
            assert head.train()(x, y).logits[0, 0].item() == pytest.approx(expected, rel=1e-5)
        head.on_optimizer_step()
    assert head.iteration.item() == 3
    assert head.annealing().item() == pytest.approx(1000.0 / (1 + 0.12 * 3))  # eval and stats: the last step's


# ---- properties every head has ----------------------------------------------------------------------
def _inputs(head, n: int = 6, norm: float = 30.0, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, head.embedding_size, generator=generator)) * norm
    return x * (1 + 0.5 * torch.rand(n, 1, generator=generator)), torch.arange(n) % head.num_classes


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_no_nan_at_cos_plus_minus_one(name, sign):
    head = build_head(name, 4, 3).train()
    row = head.weight.shape[0] // 3  # the first centre of class 1
    x = (sign * 50.0 * F.normalize(head.weight[row].detach(), dim=0)).unsqueeze(0).requires_grad_(True)
    out = head(x, torch.tensor([1]))
    out.loss.backward()
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    torch.manual_seed(0)
    head = build_head(name, 4, 5).double().eval()  # eval: buffers and margins stay fixed between calls
    x, y = _inputs(head)
    params = dict(head.named_parameters())
    names = list(params)

    def loss(x, *values):
        return torch.func.functional_call(head, dict(zip(names, values)), (x, y)).loss

    # unit-scale centres: with the init's norm of ~0.02, normalisation makes finite differences ill-conditioned
    # AdaFace detaches the norm in its margin (paper and official code): check its centres' gradient only
    centres = (torch.randn_like(p).requires_grad_(True) for p in params.values())
    inputs = (x.double().requires_grad_(name != "adaface"), *centres)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_heads_compute_in_fp32_under_autocast(name):
    head = build_head(name, 8, 5)
    x, y = _inputs(head)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x.bfloat16(), y)
    assert out.logits.dtype == torch.float32 and out.loss.dtype == torch.float32


@pytest.mark.parametrize("name", NAMES)
def test_state_round_trips_through_a_checkpoint(name):
    torch.manual_seed(0)
    head = build_head(name, 8, 5).train()
    x, y = _inputs(head)
    for _ in range(3):
        head(x, y)  # moves the buffers of stateful heads
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    restored = build_head(name, 8, 5)
    restored.load_state_dict(torch.load(buffer))
    for key, value in head.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    torch.testing.assert_close(restored.eval()(x, y).logits, head.eval()(x, y).logits)


@pytest.mark.parametrize("name", NAMES)
def test_loss_falls_on_separable_data(name):
    """Backbone-free check that each head learns: a linear embedder on Gaussian clusters, 40 Adam steps."""
    torch.manual_seed(0)
    classes, dim = 6, 16
    means = F.normalize(torch.randn(classes, dim)) * 3
    y = torch.arange(classes).repeat_interleave(20)
    x = means[y] + 0.5 * torch.randn(len(y), dim)
    embedder, head = torch.nn.Linear(dim, 8), build_head(name, 8, classes)
    optimizer = torch.optim.Adam([*embedder.parameters(), *head.parameters()], lr=0.03)
    losses = []
    for _ in range(40):
        loss = head(embedder(x) * 10, y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


@pytest.mark.parametrize("path", sorted(LOSS_CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_yaml_defaults_match_the_python_defaults(path):
    values = OmegaConf.to_container(OmegaConf.load(path))
    values.pop("defaults")
    assert values.pop("name") == path.stem and path.stem in HEADS
    signature = inspect.signature(HEADS.get(path.stem)).parameters
    for key, value in values.items():
        default = signature[key].default
        assert default == value or (default is None and value == {}), f"{path.stem}.{key}: {value} != {default}"


def test_unknown_head_lists_names():
    with pytest.raises(Exception, match="choose one of: adaface, arcface, center, combined, cosface"):
        build_head("nope", 8, 5)
