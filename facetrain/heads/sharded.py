"""Model-parallel heads: any head's classes split over the ranks, optionally with Partial FC.

Face datasets have up to millions of identities: the class centres, not the backbone, then limit the
scale. :class:`ShardedHead` wraps any registered head built for its own block of classes
(:class:`~facetrain.parallel.collectives.ClassPartition`). Each step it gathers every rank's embeddings
and labels, computes the scores of its classes for the global batch (:meth:`Head.scores`), shares the
target score of every sample from the rank that holds its class, applies the head's margin
(:meth:`Head.target_logit`) only on that rank and the head's non-target rule
(:meth:`Head.other_logits`) on all, and takes a cross-entropy whose max, sum of exponentials and
target logit are reduced over ranks. Per-sample extra terms (:meth:`Head.extra_loss`: center loss,
MagFace) and the monitoring diagnostics (:meth:`ShardedHead.global_diagnostics`) are computed by the
rank holding each sample's class. Inter-class filtering (:meth:`Head.filter_non_targets`) runs on each
rank's own columns, the rows whose class lives elsewhere having no target there. Batch statistics of
stateful heads (AdaFace, CurricularFace, center loss) see the gathered batch, so they stay the same on
every rank.
On one process the result equals the wrapped head's.

Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021;
``sample_rate < 1``): each training step a rank scores only the classes of its block that occur in the
global batch plus random others, ``int(sample_rate * classes of the block)`` in all (all positives if
there are more). Those centres are read with a row-sparse gradient, so the optimizer steps only them
(see :func:`facetrain.engine.optim.step_sparse_rows`).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from facetrain.parallel import collectives
from facetrain.heads.base import Head, HeadOutput
from facetrain.parallel.collectives import (ClassPartition, RowShard, distributed_cross_entropy, gather_batch,
                                         gather_with_grad, global_batch, sum_of_replicated, sum_with_grad)
from facetrain.precision import at_least_fp32, no_autocast

HeadBuilder = Callable[[int], Head]  # num_classes -> a head of that many classes


def per_class_rows(build: HeadBuilder) -> dict[str, int]:
    """State names of the per-class tensors of the heads ``build`` makes, with their rows per class:
    the tensors whose first dimension grows with ``num_classes`` (found by building 1 and 2 classes)."""
    with torch.random.fork_rng(devices=[]):
        one, two = build(1).state_dict(), build(2).state_dict()
    rows = {}
    for name, tensor in one.items():
        grows = two[name].dim() > 0 and two[name].shape[0] - tensor.shape[0]
        if grows:
            if tensor.shape[0] != grows or two[name].shape[1:] != tensor.shape[1:]:
                raise ValueError(f"head tensor {name} has {tensor.shape[0]} rows for 1 class and {two[name].shape[0]} "
                                 "for 2: a per-class tensor needs the same number of rows for every class")
            rows[name] = grows
    return rows


class ShardedHead(Head):
    """The head ``build(n)`` with this rank's block of ``num_classes`` classes (model parallelism).

    ``forward(embeddings, labels)`` takes this rank's batch and returns the mean loss of the global batch
    (the same on every rank) and this rank's columns of the global batch's logits. Gradients reach each
    rank's embeddings and its own centres; replicated parameters of the model get partial gradients that
    sum, over ranks, to the gradient of the loss (the trainer sums them: ``loss_covers_global_batch``).
    Ranks and world size are the process group's (one process without one).
    """

    loss_covers_global_batch = True

    def __init__(self, build: HeadBuilder, num_classes: int, sample_rate: float = 1.0) -> None:
        ranks, me = collectives.world_size(), collectives.rank()
        if ranks > num_classes:
            raise ValueError(f"cannot split {num_classes} classes over {ranks} ranks: every rank needs one")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate={sample_rate} must be in (0, 1]")
        partition = ClassPartition(num_classes, ranks)
        inner = build(partition.count(me))
        super().__init__(inner.embedding_size, num_classes, centres_per_class=None)
        self.inner = inner
        self.rank, self.start, self.count = me, partition.start(me), partition.count(me)
        self.sample_rate = sample_rate
        self.num_sample = max(1, int(sample_rate * self.count))
        self.shards = {name: RowShard(partition, me, rows) for name, rows in per_class_rows(build).items()}

    @property
    def weight(self) -> torch.Tensor:
        """This rank's class centres."""
        return self.inner.weight

    def scores(self, embeddings: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scores of this rank's classes (``classes`` index its block)."""
        return self.inner.scores(embeddings, classes)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        with no_autocast(embeddings):
            embeddings = gather_with_grad(at_least_fp32(embeddings))
            local = gather_batch(labels) - self.start
            owned = (local >= 0) & (local < self.count)
            classes = self.sample(local[owned]) if self.sample_rate < 1.0 and self.training else None
            column = torch.where(owned, local, 0)
            if classes is not None:
                column = torch.where(owned, torch.searchsorted(classes, column), 0)
            column, mine = column.view(-1, 1), owned.view(-1, 1)
            with global_batch():
                scores = self.inner.scores(embeddings, classes)
                score_target = sum_with_grad(torch.where(mine, scores.gather(1, column), 0.0))
                scores, filtered = self.inner.filter_non_targets(scores, column, mine)
                others = self.inner.other_logits(scores, score_target, embeddings)
                target = torch.where(mine, self.inner.target_logit(score_target, embeddings), others.gather(1, column))
                logits = others.scatter(1, column, target)
                loss = distributed_cross_entropy(logits, column, owned)
                extra = self.inner.extra_loss(embeddings[owned], local[owned])
            if extra is not None:
                loss = loss + sum_of_replicated(extra.sum()) / len(embeddings)
            return HeadOutput(loss, logits, self.global_diagnostics(embeddings, local, owned, target, filtered))

    @torch.no_grad()
    def global_diagnostics(self, embeddings: torch.Tensor, local: torch.Tensor, owned: torch.Tensor,
                           target: torch.Tensor, filtered: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """:meth:`Head.diagnostics` of the global batch (the same on every rank): each sample's target
        logit and target angle come from the rank holding its class (its rows of the centres, indexed in
        its block) and are summed over ranks (one all-reduce). In the same all-reduce, the scores each rank
        filtered in its columns (``filtered`` ``[N]``, with inter-class filtering) add up to the global
        batch's count, which the wrapped head keeps for :meth:`stats`."""
        owned_values = torch.stack([target.squeeze(1)[owned], self.inner.target_angle(embeddings[owned], local[owned])], dim=1)
        values = embeddings.new_zeros((len(embeddings), 2)).index_put_((owned,), owned_values)
        if filtered is not None:
            values = torch.cat([values, filtered.to(values.dtype).view(-1, 1)], dim=1)
        values = sum_with_grad(values)  # no grad here: a plain sum over ranks
        if filtered is not None:
            self.inner.record_filtered(values[:, 2].sum())
        return {"target_logit": values[:, 0], "target_angle": values[:, 1], "embedding_norm": embeddings.norm(dim=1)}

    def class_block(self) -> tuple[int, int]:
        return self.start, self.count

    def stats(self) -> dict[str, torch.Tensor]:
        """The wrapped head's (its scalar state is the same on every rank; the count of filtered scores is
        the global batch's)."""
        return self.inner.stats()

    @torch.no_grad()
    def sample(self, positives: torch.Tensor) -> torch.Tensor:
        """Sorted indices (in this rank's block) of the classes scored this step: every positive, then
        random negatives up to ``num_sample``."""
        positives = torch.unique(positives)
        if len(positives) >= self.num_sample:
            return positives
        priority = torch.rand(self.count, device=positives.device)
        priority[positives] = 2.0
        return priority.topk(self.num_sample).indices.sort().values

    # ---- checkpoints: the whole head, whatever the world size ---------------------------------------
    def rank_local_tensors(self) -> dict[str, RowShard]:
        return {f"inner.{name}": shard for name, shard in self.shards.items()}

    def full_state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        """The wrapped head's state with every rank's rows, on rank 0 (None elsewhere); collective."""
        full = {}
        for name, tensor in self.inner.state_dict().items():
            full[name] = self.shards[name].gather(tensor) if name in self.shards else tensor
        return full if self.rank == 0 else None

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take this rank's rows of a whole head's state (saved by any world size)."""
        self.inner.load_state_dict({name: self.shards[name].slice(value) if name in self.shards else value
                                    for name, value in state.items()})

    def extra_repr(self) -> str:
        return (f"classes {self.start}..{self.start + self.count - 1} of {self.num_classes}, "
                f"sample_rate={self.sample_rate}")


def shard_head(head: Head, build: HeadBuilder, sample_rate: float = 1.0) -> ShardedHead:
    """``head`` split over the process group's ranks: each keeps its rows of ``head``'s state, so the
    run starts from the same centres whatever the world size."""
    sharded = ShardedHead(build, head.num_classes, sample_rate)
    sharded.load_full_state_dict(head.state_dict())
    return sharded
