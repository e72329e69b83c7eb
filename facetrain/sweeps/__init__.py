"""Many runs: a sweep's bookkeeping (``sweep.json``/``sweep.md``, :mod:`~facetrain.sweeps.sweep`), comparing runs
(:mod:`~facetrain.sweeps.compare`), and submitit jobs on SLURM (:mod:`~facetrain.sweeps.submitit_jobs`)."""
