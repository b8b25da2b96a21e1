"""Batch fitting on the host (`fit_batch`), split by concept.

* `options` — `BatchOptions`, every setting of a run, validated;
* `plan`    — validated settings, the step configuration, the file's configuration;
* `run`     — chunks to the device(s), candidate queries on host threads, in order;
* `results` — per-object dicts, tables, public chunk dicts;
* `api`     — `fit_batch`, the entry point.

The host cuts the catalog into fixed-size chunks (the tail padded and
masked), prepares chunk ``i+1`` (candidate queries on host threads) while the
device computes chunk ``i``, and pulls results back one chunk behind, so the
device never waits on Python. Results always come back in object order.
"""

from .api import fit_batch as fit_batch
from .options import RETURN_MODES as RETURN_MODES
from .options import BatchOptions as BatchOptions
from .plan import RESERVED_KEYS as RESERVED_KEYS
from .plan import BatchPlan as BatchPlan
from .plan import plan_batch as plan_batch
from .plan import poor_fit_chi2 as poor_fit_chi2
from .run import chunks_to_redo as chunks_to_redo
