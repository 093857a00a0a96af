"""Test-wide settings.

The tests' models are tiny, so every op is small and a second intra-op thread only adds synchronisation;
on a busy 2-core machine (CI, or several test processes) oversubscribed threads slow small ops down by an
order of magnitude. One thread per process, inherited by the subprocesses that tests start.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
