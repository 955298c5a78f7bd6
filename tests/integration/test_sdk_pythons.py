"""The merchant SDK's own tests on every Python it claims, not only on the engine's.

merchant_sdk/pyproject.toml says `requires-python >=3.9`: tills run what they
run. The SDK is installed from its folder into a fresh virtual environment of
each interpreter (pyenv's, or one on PATH), with nothing of the engine, and its
tests that need no engine run there. The engine's own interpreter (3.11) runs
them in the main suite. An interpreter that is missing fails its case: the
claim would be untested.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "merchant_sdk"
# The SDK's floor and every later release before the engine's own, and after it.
PYTHONS = ["3.9", "3.10", "3.12", "3.13"]
SDK_TESTS = ["tests/sdk/test_client_unit.py", "tests/sdk/test_client_deadline.py"]  # test_client_live.py needs the engine
TEST_REQUIREMENTS = ["pytest>=8,<10", "pytest-timeout>=2.3"]


def test_the_list_starts_at_the_sdk_s_floor() -> None:
    claimed = re.search(r'^requires-python = ">=(3\.\d+)"$', (SDK / "pyproject.toml").read_text(), re.MULTILINE)
    assert claimed is not None
    assert PYTHONS[0] == claimed.group(1)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" not in PYTHONS  # the main suite's own


def _interpreter(version: str) -> str | None:
    """pyenv's newest X.Y.z, else a `pythonX.Y` on PATH that runs (pyenv's shim names one it may refuse to run)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    patch = re.compile(rf"/{re.escape(version)}\.(\d+)/bin/")
    installed = {}
    for path in glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")):
        match = patch.search(path)
        if match:
            installed[int(match.group(1))] = path
    if installed:
        return installed[max(installed)]
    found = shutil.which(f"python{version}")
    if found and _run([found, "--version"], ROOT).returncode == 0:
        return found
    return None


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("version", PYTHONS)
def test_the_sdk_s_tests_pass_on_each_python_it_claims(version: str, tmp_path: Path) -> None:
    interpreter = _interpreter(version)
    assert interpreter is not None, (
        f"Python {version} is not on this machine (neither python{version} on PATH nor pyenv's): "
        f"the SDK claims it (merchant_sdk/pyproject.toml); install it, e.g. `pyenv install {version}`"
    )
    venv = tmp_path / "venv"
    made = _run([interpreter, "-m", "venv", str(venv)], ROOT)
    assert made.returncode == 0, made.stderr
    python = str(venv / "bin" / "python")
    installed = _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(SDK), *TEST_REQUIREMENTS], ROOT)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # --noconftest: tests/conftest.py builds the engine's backends, which this environment has not.
    tested = _run([python, "-m", "pytest", "-q", "--noconftest", "-p", "no:cacheprovider", *SDK_TESTS], ROOT)

    output = tested.stdout + tested.stderr
    assert tested.returncode == 0, output[-6000:]
    summary = output.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed in [\d.]+s( \([\d:]+\))?", summary.strip("= ")), summary  # none skipped, none failed
    probe = _run([python, "-c", "import sys, merchant_sdk; print(sys.version_info[:2], merchant_sdk.__file__)"], tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert f"({version.replace('.', ', ')})" in probe.stdout and "site-packages" in probe.stdout  # the installed SDK, not the source tree
