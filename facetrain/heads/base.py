"""The head contract: ``forward(embeddings, labels) -> HeadOutput(loss, logits)``.

``logits`` is exactly what cross-entropy sees (margins and scale applied); ``loss`` adds any extra
per-sample term (:meth:`Head.extra_loss`). Heads compute in fp32 even under autocast (float64 stays
float64, for gradient checks). Class centres live in ``weight`` ``[num_classes * centres_per_class,
embedding_size]`` (one row per class unless a head says otherwise); state that must survive a restart
lives in buffers.

A head builds its logits from three parts, which is what lets one wrapper split any head's classes
over ranks (:class:`facetrain.heads.sharded.ShardedHead`):

- :meth:`Head.scores` ``[N, C]``: label-free, column ``j`` reads only class ``j``'s rows of the
  per-class tensors (``weight``, a bias), so a rank can compute its own columns;
- :meth:`Head.target_logit` from the target column's score ``[N, 1]`` (the margin);
- :meth:`Head.other_logits`: every other column, given the scores and the target score.

Per-class tensors are the parameters and buffers whose first dimension grows with ``num_classes``.

For monitoring, every forward also returns :meth:`Head.diagnostics` (per-sample values, detached) and
:meth:`Head.stats` names the head's state worth watching; the trainer logs both without knowing the head.

Inter-class filtering (arcface_torch's ``interclass_filtering_threshold``, for data with identities that
are one person): :meth:`Head.filter_non_targets` multiplies by 0 every non-target score above the threshold
before the non-target rule sees it (the margin heads take the threshold; 0 = off), and counts them.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from facetrain.parallel.collectives import RowShard
from facetrain.precision import at_least_fp32, no_autocast


@dataclass
class HeadOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N], detached


class _RowRead(torch.autograd.Function):
    """``tensor[rows]`` whose gradient is row-sparse (a COO tensor holding only ``rows``)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        ctx.shape = tensor.shape
        ctx.save_for_backward(rows)
        return tensor.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (rows,) = ctx.saved_tensors
        return torch.sparse_coo_tensor(rows.unsqueeze(0), grad, ctx.shape, is_coalesced=True, check_invariants=False), None


class Head(nn.Module, ABC):
    """Base class: a classifier over ``num_classes`` identities trained with cross-entropy.

    ``centres_per_class=None`` creates no ``weight``: for heads that wrap another head and expose its
    ``weight`` (center loss).
    """

    loss_covers_global_batch = False  # True: the loss is that of every rank's batch (sharded heads)
    interclass_filtering_threshold = 0.0  # > 0: non-target scores above it count 0 (filter_non_targets)

    def __init__(self, embedding_size: int, num_classes: int, centres_per_class: Optional[int] = 1) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        if centres_per_class is not None:
            rows = num_classes * centres_per_class
            self.weight = nn.Parameter(torch.normal(0.0, 0.01, (rows, embedding_size)))

    # ---- the parts of the logits ----------------------------------------------------------------
    @abstractmethod
    def scores(self, embeddings: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Label-free scores ``[N, C]`` of every class, or ``[N, len(classes)]`` of ``classes`` (sorted
        class indices; read per-class tensors through :meth:`class_rows`)."""

    def target_logit(self, score_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """The target logit ``[N, 1]`` from the target class's score; by default the score itself."""
        return score_target

    def other_logits(self, scores: torch.Tensor, score_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Logits of the non-target columns (the target column is overwritten); by default the scores."""
        return scores

    def extra_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-sample terms ``[N]`` added (averaged) to the cross-entropy, or None. May read per-class
        tensors at ``labels`` only."""
        return None

    def filter_non_targets(self, scores: torch.Tensor, column: torch.Tensor,
                           has_target: torch.Tensor | bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """arcface_torch's inter-class filtering: ``scores`` with every non-target score above
        :attr:`interclass_filtering_threshold` multiplied by 0 (no gradient reaches it), and the number of
        them per sample ``[N]`` (None when the threshold is 0: ``scores`` unchanged). ``column`` ``[N, 1]``
        is each sample's target column, where ``has_target`` ``[N, 1]`` says these columns hold it (a
        sharded head's rows whose class another rank holds have no target among its columns)."""
        if self.interclass_filtering_threshold <= 0:
            return scores, None
        with torch.no_grad():
            dirty = scores > self.interclass_filtering_threshold
            dirty.scatter_(1, column, dirty.gather(1, column) & ~torch.as_tensor(has_target, device=scores.device))
            keep = (~dirty).to(scores.dtype)
        return keep * scores, dirty.sum(dim=1)

    def record_filtered(self, count: torch.Tensor) -> None:
        """Keep the number of scores the last forward filtered (its whole batch) for :meth:`stats`."""
        self.filtered_logits.copy_(count)

    # ---- composed ---------------------------------------------------------------------------------
    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """fp32 logits ``[N, num_classes]`` fed to cross-entropy."""
        scores = self.scores(embeddings)
        index = labels.view(-1, 1)
        score_target = scores.gather(1, index)
        scores, filtered = self.filter_non_targets(scores, index)
        if filtered is not None:
            self.record_filtered(filtered.sum())
        others = self.other_logits(scores, score_target, embeddings)
        return others.scatter(1, index, self.target_logit(score_target, embeddings))

    def loss(self, logits: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``logits`` plus the mean of :meth:`extra_loss`."""
        loss = F.cross_entropy(logits, labels)
        extra = self.extra_loss(embeddings, labels)
        return loss if extra is None else loss + extra.mean()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        with no_autocast(embeddings):
            embeddings = at_least_fp32(embeddings)
            logits = self.logits(embeddings, labels)
            loss = self.loss(logits, embeddings, labels)
            return HeadOutput(loss, logits, self.diagnostics(embeddings, labels, logits))

    @torch.no_grad()
    def diagnostics(self, embeddings: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample values ``[N]`` to watch during training (device ops only, no host sync): the
        ``target_logit`` cross-entropy sees, the ``target_angle`` in degrees between the embedding and
        its class centre (the nearest one, for heads with several per class) and the ``embedding_norm``.
        A head whose ``weight`` does not hold all its classes' centres computes its own (the sharded head)."""
        return {
            "target_logit": logits.gather(1, labels.view(-1, 1)).squeeze(1),
            "target_angle": self.target_angle(embeddings, labels),
            "embedding_norm": embeddings.norm(dim=1),
        }

    @torch.no_grad()
    def target_angle(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The angle ``[N]`` in degrees between each embedding and its class centre in ``weight`` (the
        nearest one, for heads with several per class)."""
        centres = self.weight.view(self.num_classes, -1, self.embedding_size)[labels]
        cos = torch.einsum("nd,nkd->nk", F.normalize(embeddings), F.normalize(centres, dim=2)).amax(dim=1)
        return torch.acos(cos.clamp(-1.0, 1.0)) * (180.0 / math.pi)

    def class_block(self) -> tuple[int, int]:
        """``(first class, number of classes)`` whose centres this head holds: all of them unless sharded."""
        return 0, self.num_classes

    @torch.no_grad()
    def init_class_centres(self, centres: torch.Tensor) -> None:
        """Set the centres of the classes of :meth:`class_block` from ``centres`` ``[count, embedding_size]``
        (every sub-centre of a class alike), e.g. to the mean embedding of each class's images."""
        self.weight.view(len(centres), -1, self.embedding_size).copy_(centres.unsqueeze(1))

    def on_optimizer_step(self) -> None:
        """Called once after every optimizer step (a skipped one too), on every head in the model, wrapped
        heads included: for state that follows the optimizer's steps rather than the forward passes
        (SphereFace's annealing). Batch statistics (AdaFace, CurricularFace) update in the forward.
        A head that counts steps here converts its count in :meth:`re_express_steps`."""

    def re_express_steps(self, re_express: Callable[[int], int]) -> None:
        """Called after loading a checkpoint written with another global batch: ``re_express`` maps a count
        of the saved run's optimizer steps to this run's at the same place in the data (as the trainer's
        step counter and schedule are mapped). A head whose state counts optimizer steps converts it here."""

    def stats(self) -> dict[str, torch.Tensor]:
        """The head's state worth watching, as named scalar tensors read at log intervals: by default every
        scalar floating-point buffer (AdaFace's ``batch_mean`` and ``batch_std``, CurricularFace's ``t``)."""
        return {name: buffer for name, buffer in self.named_buffers() if buffer.dim() == 0 and buffer.is_floating_point()}

    def class_rows(self, tensor: torch.Tensor, classes: Optional[torch.Tensor]) -> torch.Tensor:
        """The rows of per-class ``tensor`` that belong to ``classes`` (all of it for None). The
        gradient of a subset is row-sparse: rows of classes not read get none (Partial FC)."""
        if classes is None:
            return tensor
        per_class = tensor.shape[0] // self.num_classes
        rows = (classes.unsqueeze(1) * per_class + torch.arange(per_class, device=classes.device)).flatten()
        return _RowRead.apply(tensor, rows)

    # ---- sharding (see facetrain.heads.sharded; a plain head holds all its rows) ----------------
    def rank_local_tensors(self) -> dict[str, RowShard]:
        """State names of tensors that hold only this rank's rows, with how they are split."""
        return {}

    def full_state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        """The state of the whole head, as one process would hold it (collective for sharded heads:
        every rank calls it, rank 0 receives it)."""
        return self.state_dict()

    def load_full_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a state written by :meth:`full_state_dict`, whatever the world size it came from."""
        self.load_state_dict(state)


class MarginHead(Head):
    """Normalised-softmax head: non-target logits ``s*cos(theta_j)``, target ``s*target_cosine(...)``.

    Only the target column is modified (a gather and a scatter, no one-hot matrix).
    """

    def __init__(self, embedding_size: int, num_classes: int, s: float, centres_per_class: int = 1,
                 interclass_filtering_threshold: float = 0.0) -> None:
        super().__init__(embedding_size, num_classes, centres_per_class)
        self.s = s
        if interclass_filtering_threshold > 0:
            self.interclass_filtering_threshold = interclass_filtering_threshold
            # non-target logits the last forward filtered (its global batch): stats() -> TensorBoard head/filtered_logits
            self.register_buffer("filtered_logits", torch.zeros(()), persistent=False)

    def cosine(self, embeddings: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``cos(theta)`` between every embedding and the centres of ``classes`` (all for None), clamped to [-1, 1]."""
        return F.linear(F.normalize(embeddings), F.normalize(self.class_rows(self.weight, classes))).clamp(-1.0, 1.0)

    def scores(self, embeddings: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.cosine(embeddings, classes)

    @abstractmethod
    def target_cosine(self, cos_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """The margin-modified target term (before scaling) from ``cos(theta_y)`` ``[N, 1]``.

        ``embeddings`` are the raw (un-normalised) embeddings, for heads whose margin depends on the
        feature norm.
        """

    def target_logit(self, score_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.s * self.target_cosine(score_target, embeddings)

    def other_logits(self, scores: torch.Tensor, score_target: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return self.s * scores

    def extra_repr(self) -> str:
        filtering = self.interclass_filtering_threshold
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}"
                + (f", interclass_filtering_threshold={filtering}" if filtering > 0 else ""))
