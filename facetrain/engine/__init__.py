"""The training loop: the trainer (:mod:`~facetrain.engine.trainer`) and what it steps with: its settings, the
model wrapper, optimiser and schedule, fp16 loss scaling agreed over ranks, the non-finite guard, the step window's
sums, the run record, what it reports, fine-tuning, and the step benchmark."""
