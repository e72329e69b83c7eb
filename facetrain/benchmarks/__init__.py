"""The measurements behind BENCHMARKS.md, one module per ``scripts/benchmark.py`` command (data, head, ijb, train,
backbones, align), and how they measure (:mod:`~facetrain.benchmarks.measure`). Speed is measured here, never in a
timed test."""
