"""seglab.errors.explain: which errors are a user's mistake (one line) and which are bugs (traceback)."""

import subprocess

import pytest
from hydra.utils import instantiate

from seglab import errors
from seglab.data import DataError


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
