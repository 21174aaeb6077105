#!/usr/bin/env python3
"""One entry for set-up, the main job and the tests; needs only Python 3.11+ and pip.

    python3 dev.py run     # the whole pipeline on projects/digits against a local tracking server
    python3 dev.py test    # the whole test suite
    python3 dev.py setup   # just (re)build the virtual environment in .venv

Each command first makes sure .venv exists and matches pyproject.toml (it reinstalls when the
dependencies change), and that torchvision's compiled ops load. Extra arguments pass through:
`python3 dev.py run --project projects/wine`, `python3 dev.py test -k config -x`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("TRAINWISE_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".trainwise-installed"
DEFAULT_PROJECT = "projects/digits"

# Calls torchvision's compiled nms op: with a CPU-only torch 2.13.0+cpu beside torchvision 0.29
# the import itself fails with "operator torchvision::nms does not exist".
TORCHVISION_CHECK = """
import torch, torchvision
from torchvision.ops import nms
nms(torch.tensor([[0., 0., 1., 1.]]), torch.tensor([1.]), 0.5)
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}: ok")
"""


def say(message: str) -> None:
    print(f"[dev.py] {message}", flush=True)


def die(message: str, code: int = 1) -> None:
    print(f"[dev.py] error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def run(command: list[str | Path], **kwargs: object) -> int:
    return subprocess.call([str(part) for part in command], cwd=ROOT, **kwargs)  # type: ignore[arg-type]


def requirements_digest() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def setup() -> None:
    """Create .venv if missing and install trainwise with its test dependencies."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py itself may be started by an older python3
        die(f"trainwise needs Python 3.11 or newer; this is {sys.version.split()[0]} ({sys.executable})")
    wanted = requirements_digest()
    if PYTHON.exists() and STAMP.is_file() and STAMP.read_text() == wanted:
        return
    if not PYTHON.exists():
        say(f"creating the virtual environment {VENV}")
        if run([sys.executable, "-m", "venv", VENV]) != 0:
            die(f"could not create {VENV}; on Debian/Ubuntu install the venv module (apt install python3-venv)")
    quiet = ["--progress-bar", "off"] if os.environ.get("CI") else []
    say("installing trainwise and its dependencies (torch is large: the first time takes a few minutes)")
    if run([PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", *quiet, "--upgrade", "pip"]) != 0:
        die("upgrading pip failed; see the messages above")
    if run([PYTHON, "-m", "pip", "install", "--disable-pip-version-check", *quiet, "-e", ".[dev]"]) != 0:
        die("pip could not install trainwise; see the messages above (is the package registry reachable?)")
    if run([PYTHON, "-c", TORCHVISION_CHECK]) != 0:
        die(
            "`import torchvision` fails in .venv. torchvision's compiled ops need the registry's default torch "
            "build; a CPU-only torch 2.13.0+cpu wheel (which pip may prefer from a local wheel folder) breaks it. "
            f"Fix: {PYTHON} -m pip install --force-reinstall 'torch>=2.14' 'torchvision>=0.29' (or delete {VENV} and rerun)."
        )
    STAMP.write_text(wanted)


def ensure_browser() -> None:
    """Install Chromium and its WebDriver for tests/integration/test_ui.py where we can (Debian, root).

    Never fails the test command: without them the browser tests skip and say why.
    """
    if Path("/usr/bin/chromedriver").exists() or shutil.which("chromedriver"):
        return
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        say("no chromedriver: the browser tests will skip (as root on Debian/Ubuntu: apt-get install chromium chromium-driver)")
        return
    say("installing chromium and chromium-driver with apt-get for the browser tests")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update: list[str | Path] = [apt, "update", "-qq"]
    install: list[str | Path] = [apt, "install", "-y", "-qq", "--no-install-recommends", "chromium", "chromium-driver"]
    # Fresh containers have no package lists: update first. Stale lists: update after a failed install.
    fresh = not any(Path("/var/lib/apt/lists").glob("*_Packages*"))
    code = run(update, env=env) if fresh else 0
    code = run(install, env=env) if code == 0 else code
    if code != 0 and not fresh and run(update, env=env) == 0:
        code = run(install, env=env)
    if code != 0:
        say(f"apt-get failed (exit {code}): the browser tests will skip")


def main_job(args: list[str]) -> int:
    """Start the local tracking server if none runs, then the whole pipeline."""
    trainwise = BIN / "trainwise"
    if run([trainwise, "server", "start"]) != 0:
        return 1
    if not any(arg in ("--project", "-p") or arg.startswith("--project=") for arg in args):
        args = ["--project", DEFAULT_PROJECT, *args]
    return run([trainwise, "run", *args])


def tests(args: list[str]) -> int:
    code = run([PYTHON, "-m", "pytest", *args])
    if code == 5:  # pytest: no tests collected; a suite that runs nothing must not pass
        print("[dev.py] error: pytest collected no tests; failing", file=sys.stderr)
        return 1
    return code


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test", "setup"):
        print(__doc__)
        sys.exit(2)
    command, args = sys.argv[1], sys.argv[2:]
    setup()
    if command == "run":
        sys.exit(main_job(args))
    if command == "test":
        ensure_browser()
        sys.exit(tests(args))


if __name__ == "__main__":
    main()
