"""The processes of a run: process groups and collectives on plain objects (:mod:`~facetrain.parallel.groups`),
autograd-aware collectives and class partitions for heads split over ranks (:mod:`~facetrain.parallel.collectives`),
optimizer state of rank-local tensors (:mod:`~facetrain.parallel.shards`), and batch norm over every rank's batch
(:mod:`~facetrain.parallel.sync_bn`). Below data and heads: it imports neither."""
