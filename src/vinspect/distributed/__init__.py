"""Batch feature extraction and prediction on a Ray cluster (``--ray ADDRESS|auto|local``).

The driver lists the input files, leaves out those already in the output folder (resume), and hands the rest
to Ray Data in blocks; an actor pool holds the model (one actor per ``cpus_per_worker`` cores of the cluster),
each actor reads its files, hashes and decodes them and runs the engine; the results stream back to the driver,
which alone writes them as a Parquet dataset, one row per input, in files committed atomically.  A worker
that dies is restarted by Ray and its block retried; the driver keeps each path once, so the output holds
every input exactly once.

Nothing here imports Ray at import time: only a run does (:func:`.batch.run`), so the rest of vinspect never
depends on it.  Install it with ``pip install 'vinspect[ray]'``.
"""

from .batch import ExtractJob, PredictJob, RunSummary, read_results, run  # noqa: F401 (no Ray import)
