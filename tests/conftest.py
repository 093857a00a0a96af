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


# torchrun-launched tests: every rank's output teed with a `[rank k]:` prefix, so that when a worker dies the
# failure message can lead with what that worker printed, not only the launcher's own traceback.
TORCHRUN_TEE = ("--tee", "3")
TORCHRUN_ENV = {"TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank ${rank}]:"}


def torchrun_failure(stderr: str, lines: int = 25) -> str:
    """Each rank's last `lines` lines of output, then the tail of the launcher's report."""
    out = stderr.splitlines()
    ranks = sorted({line.split("]:", 1)[0] + "]" for line in out if line.startswith("[rank ")})
    parts = [line for rank in ranks for line in [x for x in out if x.startswith(rank)][-lines:]]
    return "\n".join(parts) + "\n--- launcher ---\n" + stderr[-1200:]
