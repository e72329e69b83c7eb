"""Inter-class filtering (``loss.interclass_filtering_threshold``) equals arcface_torch's, on one process, over
gloo ranks and with Partial FC, and is counted in the head's stats.

The facts were measured by running arcface_torch's ``CombinedMarginLoss`` and ``PartialFC_V2``
(``recognition/arcface_torch/losses.py`` and ``partial_fc_v2.py`` at insightface 7fadd420, unchanged in
substance since 9097cd7b, June 2023) outside this repository on the inputs of :func:`inputs`, s=64: their
cross-entropy loss (theirs with ``torch.nn.functional.cross_entropy`` on one process, their
``DistCrossEntropy`` over 2 ranks), the number of non-target cosines above the threshold, and the sums of
the absolute gradients. Side by side, logits differed by at most 1.6e-5 (arcface_torch's arccos/cos round
trip), gradients by at most 1.4e-6. Over ranks, arcface_torch's embedding gradient is the world size times
facetrain's (its all-gather multiplies by the world size for DDP's averaging; facetrain's trainer sums the
ranks' partial gradients instead).
"""
from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from facetrain.heads import build_head
from facetrain.heads.sharded import ShardedHead
from tests.dist_helpers import run_ranks
from tests.test_configs import CONFIGS
from tests.test_monitoring import events, frozen_trainer, last

pytestmark = pytest.mark.usefixtures("one_thread")

S = 64.0
HEADS = {  # arcface_torch's margins (m1, m2, m3) -> the facetrain head that equals them
    "arcface (1.0, 0.5, 0.0)": ("arcface", {"m": 0.5, "variant": "plain", "straight_through": True}),
    "combined (1.0, 0.5, 0.0)": ("combined", {"m1": 1.0, "m2": 0.5, "m3": 0.0, "straight_through": True}),
    "cosface (1.0, 0.0, 0.4)": ("cosface", {"m": 0.4}),
    "combined (1.0, 0.0, 0.4)": ("combined", {"m1": 1.0, "m2": 0.0, "m3": 0.4, "straight_through": True}),
}
# one process, inputs(16, 24, seed=7): threshold -> (loss, filtered logits, sum |dL/dE|, sum |dL/dW|)
ARC_FACTS = {0.0: (7.589132308959961, 0, 33.012786865234375, 32.34196090698242),
             0.4: (0.006390098016709089, 56, 0.5265052914619446, 0.6463398337364197)}
COS_FACTS = {0.0: (10.89831256866455, 0, 41.867828369140625, 44.42647933959961),
             0.4: (0.02694416604936123, 56, 1.89152193069458, 2.3648576736450195)}
ONE_PROCESS = {name: ARC_FACTS if "0.5" in name else COS_FACTS for name in HEADS}
# 2 gloo ranks, inputs(16, 40, seed=11), threshold 0.4, each rank seeded 100 + rank before the forward:
# (head, sample_rate) -> (loss, sum |dL/dW| per rank, sum |dL/dE| per rank (arcface_torch's, / 2 here),
#                         classes sampled per rank (in its block of 20), filtered logits of the global batch)
TWO_RANKS = {
    ("cosface (1.0, 0.0, 0.4)", 1.0): (0.037394676357507706, [1.161178708076477, 1.2371909618377686],
                                       [2.252237558364868, 1.2342602014541626], None, 82),
    ("cosface (1.0, 0.0, 0.4)", 0.5): (0.033586449921131134, [1.00863778591156, 1.205797553062439],
                                       [1.999192476272583, 1.1466686725616455],
                                       [[4, 5, 6, 7, 11, 14, 15, 16, 18, 19], [2, 3, 4, 6, 9, 13, 14, 15, 16, 18]], 39),
    ("arcface (1.0, 0.5, 0.0)", 0.5): (0.011867823079228401, [0.48144906759262085, 0.3833215534687042],
                                       [0.9501186609268188, 0.16988137364387512],
                                       [[4, 5, 6, 7, 11, 14, 15, 16, 18, 19], [2, 3, 4, 6, 9, 13, 14, 15, 16, 18]], 39),
}


def inputs(n: int, classes: int, seed: int, dim: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(embeddings, centres, labels)``: embeddings near their class's centre, centres random in 8 dimensions (so
    many non-target cosines pass 0.4)."""
    generator = torch.Generator().manual_seed(seed)
    centres, labels = torch.randn(classes, dim, generator=generator), torch.randint(0, classes, (n,), generator=generator)
    return centres[labels] + torch.randn(n, dim, generator=generator) * 0.5, centres, labels


def head_with(name: str, threshold: float, centres: torch.Tensor):
    head_name, hparams = HEADS[name]
    head = build_head(head_name, centres.shape[1], len(centres), s=S, interclass_filtering_threshold=threshold, **hparams)
    with torch.no_grad():
        head.weight.copy_(centres)
    return head


@pytest.mark.parametrize("threshold", [0.0, 0.4])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_filtering_equals_arcface_torch_on_one_process(name, threshold):
    embeddings, centres, labels = inputs(16, 24, seed=7)
    head = head_with(name, threshold, centres)
    embeddings.requires_grad_(True)
    output = head(embeddings, labels)
    output.loss.backward()
    loss, filtered, grad_embeddings, grad_centres = ONE_PROCESS[name][threshold]
    assert output.loss.item() == pytest.approx(loss, rel=2e-6)
    assert float(head.stats().get("filtered_logits", 0.0)) == filtered
    assert embeddings.grad.abs().sum().item() == pytest.approx(grad_embeddings, rel=1e-5)
    assert head.weight.grad.abs().sum().item() == pytest.approx(grad_centres, rel=1e-5)


def test_filtered_logits_are_zero_without_gradient_and_the_target_is_never_filtered():
    embeddings, centres, labels = inputs(16, 24, seed=7)
    head = head_with("cosface (1.0, 0.0, 0.4)", 0.4, centres)
    cos = head.cosine(embeddings).detach().requires_grad_(True)
    target = torch.nn.functional.one_hot(labels, 24).bool()
    assert (cos[target] > 0.4).sum() >= 12  # most targets pass the threshold, and are kept
    kept, count = head.filter_non_targets(cos, labels.view(-1, 1))
    dirty = (cos > 0.4) & ~target
    assert count.sum() == dirty.sum() == 56 and torch.equal(count, dirty.sum(dim=1))
    assert (kept[dirty] == 0).all() and torch.equal(kept[~dirty], cos[~dirty])
    kept.sum().backward()
    assert torch.equal(cos.grad, (~dirty).float())  # no gradient reaches a filtered cosine
    logits = head(embeddings, labels).logits
    assert (logits[dirty] == 0).all() and torch.allclose(logits[target], S * (cos[target] - 0.4))


def test_subcenter_arcface_filters_on_the_class_cosine_the_max_over_its_subcentres():
    embeddings, centres, labels = inputs(16, 24, seed=7)
    head = build_head("subcenter_arcface", 8, 24, k=3, interclass_filtering_threshold=0.4)
    class_cos = head.cosine(embeddings).detach()  # [16, 24]: the max over each class's 3 sub-centres
    dirty = (class_cos > 0.4) & ~torch.nn.functional.one_hot(labels, 24).bool()
    logits = head(embeddings, labels).logits
    assert dirty.sum() > 0 and (logits[dirty] == 0).all()
    assert float(head.stats()["filtered_logits"]) == dirty.sum()


def test_the_threshold_is_a_key_of_the_four_margin_heads_and_off_by_default():
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for loss in ("arcface", "cosface", "combined", "subcenter_arcface"):
            cfg = compose(config_name="train", overrides=[f"loss={loss}", "loss.interclass_filtering_threshold=0.4"])
            assert cfg.loss.interclass_filtering_threshold == 0.4
            assert compose(config_name="train", overrides=[f"loss={loss}"]).loss.interclass_filtering_threshold == 0.0
    assert build_head("arcface", 8, 4).stats() == {}  # off: no count to log


def test_the_count_reaches_tensorboard_as_a_head_stat(tmp_path):
    trainer = frozen_trainer(tmp_path, "cosface", s=16.0, m=0.2, interclass_filtering_threshold=0.05)
    trainer.fit()
    count = float(trainer.model.head.filtered_logits)
    assert count > 0
    assert last(events(tmp_path), "head/filtered_logits") == count  # the last step's, as the head keeps it


def _two_ranks(rank: int, world_size: int, out, name: str, sample_rate: float) -> None:
    embeddings, centres, labels = inputs(16, 40, seed=11)
    head_name, hparams = HEADS[name]
    head = ShardedHead(lambda n: build_head(head_name, 8, n, s=S, interclass_filtering_threshold=0.4, **hparams),
                       40, sample_rate).train()
    with torch.no_grad():
        head.weight.copy_(centres[head.start:head.start + head.count])
    rows = slice(rank * 8, rank * 8 + 8)
    mine = embeddings[rows].clone().requires_grad_(True)
    torch.manual_seed(100 + rank)  # Partial FC's draw, as arcface_torch's was seeded
    sampled = head.sample(labels[(labels >= head.start) & (labels < head.start + head.count)] - head.start).tolist() \
        if sample_rate < 1 else None
    torch.manual_seed(100 + rank)
    output = head(mine, labels[rows])
    output.loss.backward()
    torch.save({"loss": output.loss.item(), "grad_centres": head.weight.grad.to_dense().abs().sum().item(),
                "grad_embeddings": mine.grad.abs().sum().item(), "sampled": sampled,
                "filtered": float(head.stats()["filtered_logits"])}, out / f"rank{rank}.pt")


@pytest.mark.parametrize("name,sample_rate", sorted(TWO_RANKS))
def test_filtering_over_two_ranks_and_with_partial_fc_equals_arcface_torch(tmp_path, name, sample_rate):
    run_ranks(tmp_path, 2, _two_ranks, tmp_path, name, sample_rate)
    loss, grad_centres, grad_embeddings, sampled, filtered = TWO_RANKS[(name, sample_rate)]
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)  # ArcFace: arcface_torch's arccos/cos round trip
        assert got["grad_centres"] == pytest.approx(grad_centres[rank], rel=1e-5)
        assert got["grad_embeddings"] == pytest.approx(grad_embeddings[rank] / 2, rel=1e-5)
        assert got["sampled"] == (sampled[rank] if sampled else None)
        assert got["filtered"] == filtered  # the global batch's count, on every rank
