"""seglab as a user installs it: the wheel built from this checkout, installed into a directory of its own
and run from an unrelated one, so the configs must come from the package data, not from the checkout
(the venv's editable install, which maps `seglab` to a checkout, must not be what runs)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CONF_DIR, ROOT, TINY


def pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the checkout: setuptools builds in the source tree, and a build/ left there
    by an earlier build would hand its files to this one."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("seglab", "conf", "experiments"):  # conf/experiment stays a link to ../experiments, as in git
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    # Offline with the venv's setuptools when it has one; otherwise pip fetches the build backend.
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    pip("wheel", "--no-deps", *isolation, str(source), "-w", str(tmp / "dist"), cwd=tmp)
    (built,) = (tmp / "dist").glob("seglab-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel) -> tuple[Path, Path]:
    """(site directory the wheel is installed into, an unrelated working directory)."""
    site = wheel.parent.parent / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel), cwd=wheel.parent)
    elsewhere = wheel.parent.parent / "elsewhere"
    elsewhere.mkdir()
    return site, elsewhere


def python(*args: str, site: Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The venv's Python (it supplies the dependencies) with only the installed seglab on the path."""
    env = {**os.environ, "PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_every_config_and_preset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = Path(CONF_DIR)
    expected = {f"seglab/conf/{p.relative_to(conf).as_posix()}" for p in conf.rglob("*") if p.suffix in (".yaml", ".md")}
    expected |= {f"seglab/conf/experiment/{p.name}" for p in (ROOT / "experiments").glob("*") if p.suffix in (".yaml", ".md")}
    assert {"seglab/conf/config.yaml", "seglab/conf/model/unet.yaml", "seglab/conf/experiment/compare_losses.yaml"} <= expected
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel (pyproject.toml's package-data): {missing}"


def test_the_installed_package_is_the_one_that_runs(installed):
    site, elsewhere = installed
    done = python("-c", "import seglab.cli.train, seglab.config.schema as s; print(seglab.__file__); print(s.CONF_DIR)",
                  site=site, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    package_file, conf_dir = done.stdout.split()
    assert Path(package_file).is_relative_to(site), package_file
    assert Path(conf_dir) == site / "seglab" / "conf"


def test_help_lists_the_groups_from_the_package_data(installed):
    site, elsewhere = installed
    done = python("-m", "seglab", "--help", site=site, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unet_mobilenet" in done.stdout and "python -m seglab +debug=fast" in done.stdout


@pytest.mark.slow
def test_the_installed_package_trains_from_an_unrelated_directory(installed):
    from mlflow import MlflowClient

    site, elsewhere = installed
    uri = f"sqlite:///{elsewhere}/mlflow.db"
    sizes = [o for o in TINY if not o.startswith("trainer.epochs=")]  # +debug=fast's one epoch
    done = python("-m", "seglab", "+debug=fast", *sizes, f"tracking.uri={uri}", site=site, cwd=elsewhere, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("debug-shapes").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["val_mean_iou"] >= 0


def test_pyproject_lists_every_package():
    """conf/ lies outside seglab/, so pyproject.toml lists the packages by hand: a new subpackage left out of the
    list would be missing from the wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "seglab").rglob("__init__.py")}
    assert found | {"seglab.conf"} == listed
