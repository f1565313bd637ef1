"""seglab.errors.explain: which errors are a user's mistake (one line) and which are bugs (traceback)."""

import os
import re
import subprocess
import sys

import pytest
from hydra.utils import instantiate

from seglab import errors
from seglab.data import DataError
from tests.conftest import ROOT


def raises_a_bug():
    raise ValueError("an index is off by one")


def raises_a_data_error():
    raise DataError("data.source.path=x: no images in x/images.")


def test_a_builder_error_is_one_line_only_when_it_is_a_user_error():
    with pytest.raises(Exception) as bug:
        instantiate({"_target_": f"{__name__}.raises_a_bug"})
    with pytest.raises(Exception) as mistake:
        instantiate({"_target_": f"{__name__}.raises_a_data_error"})
    assert errors.explain(bug.value) is None  # a bug keeps its traceback
    assert errors.explain(mistake.value) == "data.source.path=x: no images in x/images."


def test_an_in_graph_label_check_becomes_one_line_with_the_file():
    tf_message = (
        "Graph execution error:\n\nDetected at node assert/Assert defined at (most recent call last):\n  File ...\n"
        "assertion failed: [seglab label check: a trimap holds a value outside 1..3] [file:] [/data/pets/annotations/trimaps/x.png]\n"
        "\t [[{{node Assert}}]]"
    )
    assert errors.explain(RuntimeError(tf_message)) == "seglab label check: a trimap holds a value outside 1..3 file: /data/pets/annotations/trimaps/x.png"


def test_unknown_key_names_the_closest_key():
    assert "did you mean epochs?" in errors.unknown_key_message("trainer.epoch", ["epochs", "batch_size"])


def test_a_target_that_names_nothing_is_one_line_but_a_failing_import_inside_it_is_a_bug(tmp_path, monkeypatch):
    (tmp_path / "user_module_with_a_bug.py").write_text("import a_module_nobody_has\n\ndef build():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    messages = {}
    for target in ("seglab.sweep.MlflowSweep", "seglab.losses.CrossEntropyy", "user_module_with_a_bug.build"):
        with pytest.raises(Exception) as failed:
            instantiate({"loss": {"_target_": target}}).loss
        messages[target] = errors.explain(failed.value)
    assert messages["seglab.sweep.MlflowSweep"].startswith("loss._target_=seglab.sweep.MlflowSweep: No module named 'seglab.sweep'")
    assert "has no attribute 'CrossEntropyy'" in messages["seglab.losses.CrossEntropyy"]
    assert messages["user_module_with_a_bug.build"] is None  # the module exists; what it imports does not: a bug, traceback


def test_sbatch_refusing_a_submission_is_one_line_but_a_job_failing_after_it_keeps_its_traceback():
    from submitit.core.utils import FailedJobError

    stderr = "sbatch: error: Invalid generic resource (gres) specification\nsbatch: error: Batch job submission failed"
    refused = FailedJobError(stderr)
    refused.__cause__ = subprocess.CalledProcessError(1, ["sbatch", "/x/.submission_file.sh"], stderr=stderr)
    assert errors.explain(refused).startswith(
        "SLURM refused the sweep's jobs (sbatch: sbatch: error: Invalid generic resource (gres) specification sbatch: error: Batch"
    )
    assert errors.explain(FailedJobError("Job (task=0) failed during processing with trace: ...")) is None
    with pytest.raises(FileNotFoundError) as no_sbatch:
        subprocess.run(["sbatch"], check=False, env={"PATH": "/nonexistent"})
    assert errors.explain(no_sbatch.value).startswith("`sbatch` not found: hydra/launcher=slurm and submitit_slurm")


def test_a_file_the_system_refuses_is_one_line_naming_it_but_other_errors_keep_their_traceback(tmp_path):
    with pytest.raises(IsADirectoryError) as directory:
        open(tmp_path, "w")
    assert errors.explain(directory.value) == (f"{tmp_path}: Is a directory; check the path, its permissions and the free "
                                               "space (HYDRA_FULL_ERROR=1 shows where seglab met it)")
    wrapped = RuntimeError("while writing the report")
    wrapped.__cause__ = directory.value
    assert errors.explain(wrapped).startswith(f"{tmp_path}: Is a directory")
    assert errors.explain(OSError("no file involved")) is None


def test_no_module_of_seglab_uses_hydras_private_api():
    """Hydra's private functions change without notice (errors.hydra_main replaced one, sweep.py called another)."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "seglab").rglob("*.py") if re.search(r"\bhydra\._internal\b", p.read_text())]
    assert not offenders


def test_hydra_main_lets_hydra_raise_for_the_call_only_and_keeps_the_users_choice(monkeypatch):
    """Hydra raises (not prints) what it catches while HYDRA_FULL_ERROR is set: set for the call, the user's
    own setting still decides whether seglab answers in one line, and both are as before afterwards."""
    seen = []

    def task():
        seen.append((os.environ.get("HYDRA_FULL_ERROR"), errors.full_error()))
        return 3

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    assert errors.hydra_main(task) == 3
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert errors.hydra_main(task) == 3
    assert seen == [("1", False), ("1", True)]
    assert os.environ["HYDRA_FULL_ERROR"] == "1" and errors.USER_FULL_ERROR not in os.environ
    monkeypatch.delenv("HYDRA_FULL_ERROR")

    def composing_fails():
        raise errors.UserError("trainer.epoch is not a config key")

    with pytest.raises(SystemExit) as done:
        errors.hydra_main(composing_fails)
    assert done.value.code == errors.EXIT_USER_ERROR and "HYDRA_FULL_ERROR" not in os.environ


def test_a_composition_error_of_a_hydra_main_function_is_one_line(tmp_path):
    """Through Hydra's public entry: a @hydra.main function whose composition fails (an unknown option)."""
    script = tmp_path / "app.py"
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "config.yaml").write_text("defaults:\n  - model: a\n  - _self_\n")
    (tmp_path / "conf" / "model" / "a.yaml").write_text("width: 1\n")
    script.write_text(
        "import hydra\nfrom seglab import errors\n"
        "@hydra.main(config_path='conf', config_name='config', version_base='1.3')\n"
        "def main(cfg):\n    print(cfg.model.width)\n"
        "errors.hydra_main(main, prog='app')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run([sys.executable, str(script), "model=b"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == errors.EXIT_USER_ERROR, done.stderr
    assert done.stderr.strip() == "app: model=b: no such option in conf/model/; choose one of a"
    done = subprocess.run([sys.executable, str(script), "model=a"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "1", done.stderr
