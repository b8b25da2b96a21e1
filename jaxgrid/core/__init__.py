"""The device core: what runs inside the one jitted step per chunk.

* `data`       — `GridData`, the device snapshot of a grid, and rows put into its space;
* `status`     — per-row `Status` flags and their thresholds;
* `step`       — `chunk_step` and its types (`StepConfig`, `StepParams`, `Chunk`,
  `ChunkOutput`), `pool_log_weights`;
* `truncation` — the kept-set threshold (sorted and bisection searches);
* `reductions` — histograms, mergeable moments, quantiles, modes, KDE, top-k;
* `checks`     — small dtype and argument checks shared with `jaxgrid.prob`.

The core imports nothing of jaxgrid outside ``jaxgrid.core`` and ``jaxgrid.prob``
(checked by ``tests/test_architecture.py``).
"""
