"""One run on disk: its directory (:mod:`~facetrain.runs.run_dir`), checkpoints (:mod:`~facetrain.runs.checkpoint`),
resuming (:mod:`~facetrain.runs.resume`), stopping on a signal (:mod:`~facetrain.runs.preemption`), the console
log and ``train.log`` (:mod:`~facetrain.runs.logging`), the one line a failure prints (:mod:`~facetrain.runs.failure`),
TensorBoard (:mod:`~facetrain.runs.tensorboard`) and the trackers (:mod:`~facetrain.runs.trackers`)."""
