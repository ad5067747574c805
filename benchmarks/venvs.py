"""Virtual environments for the external benchmark tools, under benchmarks/.work/venvs/ (ignored by git).

Each tool pins packages that must stay out of the project's own environment (old protobuf, old uvloop...).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent / ".work" / "venvs"


def ensure(name: str, packages: list[str]) -> Path:
    """Create benchmarks/.work/venvs/<name> (same Python as this process) with `packages` installed; return it.

    A stamp file records the package list, so a second call is instant; a changed list reinstalls."""
    venv = ROOT / name
    stamp = venv / ".installed"
    wanted = "\n".join(packages) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return venv
    ROOT.mkdir(parents=True, exist_ok=True)
    with (ROOT / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes setting up one venv take turns
        if stamp.is_file() and stamp.read_text() == wanted:
            return venv
        python = venv / "bin" / "python"
        sys.stderr.write(f"setting up {venv}: pip install {' '.join(packages)} (first time only)...\n")
        sys.stderr.flush()
        steps = [] if python.exists() else [[sys.executable, "-m", "venv", str(venv)]]
        steps.append([str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *packages])
        for cmd in steps:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if proc.returncode != 0:
                tail = "\n".join(proc.stdout.splitlines()[-20:])
                raise RuntimeError(f"{' '.join(cmd[:4])} ... failed with exit code {proc.returncode}:\n{tail}")
        stamp.write_text(wanted)
        return venv
