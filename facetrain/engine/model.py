"""The trained module: backbone, head and any extra loss terms in one ``nn.Module`` so one DDP wrapper covers
them all."""
from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from torch import nn

from facetrain.heads import Head, HeadOutput
from facetrain.parallel.collectives import RowShard, sum_of_replicated, world_size


class FaceModel(nn.Module):
    """``images -> backbone -> raw embeddings -> head(embeddings, labels)``, plus extra loss ``terms``.

    A term (e.g. :class:`facetrain.distill.term.Distillation`) is a module called as ``term(images, embeddings,
    logits, labels, indices) -> 0-dim loss`` with a float attribute ``weight``: the model adds ``weight`` times its
    value to the head's loss and reports the value as the diagnostic ``<name>_loss`` (TensorBoard
    ``train/<name>_loss``). Its parameters train with the model, its ``state_dict`` is the checkpoint's ``terms``.
    A term is written as for a data-parallel run (each rank's value is its batch's loss and DDP averages the
    gradients); beside a head whose loss covers the global batch (gradients summed over ranks) the model counts
    it as the mean over ranks, which is the same gradient.
    """

    def __init__(self, backbone: nn.Module, head: Head, terms: Optional[Mapping[str, nn.Module]] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.terms = nn.ModuleDict(terms or {})
        self.compiled_backbone: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def compile_backbone(self, mode: str = "default") -> None:
        """Run the backbone of :meth:`forward` (the training step) through ``torch.compile``.

        The compiled function is not a submodule: parameters and ``state_dict`` keys stay as they are,
        and evaluation, which calls ``self.backbone`` directly, stays eager (no second compilation for
        eval mode and its batch sizes).
        """
        self.compiled_backbone = torch.compile(self.backbone.forward, mode=mode)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, indices: Optional[torch.Tensor] = None) -> HeadOutput:
        """The head's output for a batch; ``indices`` (the samples' dataset indices) are for the terms."""
        embeddings = self.backbone(images) if self.compiled_backbone is None else self.compiled_backbone(images)
        output = self.head(embeddings, labels)
        for name, term in self.terms.items():
            value = term(images, embeddings, output.logits, labels, indices)
            if self.head.loss_covers_global_batch:
                value = sum_of_replicated(value / world_size())
            output.loss = output.loss + term.weight * value
            output.diagnostics[f"{name}_loss"] = value.detach()
        return output

    def no_weight_decay(self) -> set[str]:
        """Names (in this model) of the parameters the backbone exempts from weight decay (its
        ``no_weight_decay()``, as timm models and the ViT define it; none otherwise)."""
        names = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else set()
        return {f"backbone.{name}" for name in names}

    def heads(self) -> list[Head]:
        """Every head in the model: the head and, for a wrapper, its inner heads."""
        return [module for module in self.head.modules() if isinstance(module, Head)]

    def on_optimizer_step(self) -> None:
        """Tell every head in the model that an optimizer step finished."""
        for head in self.heads():
            head.on_optimizer_step()

    def re_express_steps(self, re_express: Callable[[int], int]) -> None:
        """Tell every head in the model that a resume re-expressed the optimizer steps in another global
        batch's (see :meth:`Head.re_express_steps`)."""
        for head in self.heads():
            head.re_express_steps(re_express)

    def rank_local_tensors(self) -> dict[str, RowShard]:
        """Parameters and buffers (by name in this model) that hold only this rank's rows: a sharded
        head's. DDP leaves them alone and checkpoints gather them."""
        return {f"head.{name}": shard for name, shard in self.head.rank_local_tensors().items()}
