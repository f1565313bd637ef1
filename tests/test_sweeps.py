"""Sweeps through `python -m seglab --multirun`, checked through MlflowClient: one parent run per
sweep, one child per job, whatever the launcher or sweeper; failures recorded, not fatal."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

from tests.conftest import CONF_DIR, ROOT, TINY, run_cli, signal_after

# Smaller than TINY still: sweeps run several trainings, and one epoch says whether the layout is right.
SWEEP_TINY = (
    *TINY, "data.source.train_size=16", "data.source.val_size=8", "trainer.epochs=1",
    "trainer.mask_samples=0", "tracking.log_model=false",
)
GRID = ("model.base_filters=2,4", "optimizer.learning_rate=0.001,0.01")


def without(*keys: str) -> tuple[str, ...]:
    """SWEEP_TINY less the keys a search sets (optuna keeps a fixed command-line value over its search space)."""
    return tuple(a for a in SWEEP_TINY if a.split("=")[0] not in keys)


# One intra-op thread per job: the recipe for parallel jobs, and the same arithmetic in every launcher.
ONE_THREAD = "+hydra.job.env_set.TF_NUM_INTRAOP_THREADS=1"


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables created once (the migrations take seconds)."""
    path = tmp_path_factory.mktemp("store") / "m.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def sweep(tmp_path: Path, empty_store: Path, *args: str, check: bool = True, env: dict | None = None) -> tuple[str, subprocess.CompletedProcess]:
    shutil.copy(empty_store, tmp_path / "m.db")
    uri = f"sqlite:///{tmp_path}/m.db"
    done = run_cli(*args, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun", cwd=tmp_path, timeout=600, check=check, env=env)
    return uri, done


def parent_and_children(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if r.data.tags.get("seglab.sweep") == "parent"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == len(runs) - 1, "every run of the sweep is a child of its parent"
    return client, parent, sorted(children, key=lambda r: int(r.data.tags["hydra.job.num"]))


def check_grid(uri: str):
    """The 2x2 GRID: one FINISHED parent holding the definition and summary, four tagged children."""
    client, parent, children = parent_and_children(uri)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "sweep model.base_filters=2,4 optimizer.learning_rate=0.001,0.01"
    assert parent.data.params["sweep.model.base_filters"] == "2,4"
    assert parent.data.metrics["jobs_succeeded"] == 4 and parent.data.metrics["jobs_failed"] == 0
    assert {"sweep.yaml", "summary.md", "summary.csv", "objective.png"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}

    assert [c.data.tags["hydra.job.num"] for c in children] == ["0", "1", "2", "3"]
    combos = [(c.data.params["model.base_filters"], c.data.params["optimizer.learning_rate"]) for c in children]
    assert combos == [("2", "0.001"), ("2", "0.01"), ("4", "0.001"), ("4", "0.01")]
    for child, (width, lr) in zip(children, combos):
        assert child.info.status == "FINISHED"
        # the job's values of the swept keys tell the runs apart in the run list
        job = child.data.tags["hydra.job.num"]
        assert child.info.run_name == f"unet-ce-shapes-job{job} model.base_filters={width} optimizer.learning_rate={lr}"
        assert f"model.base_filters={width}" in child.data.tags["hydra.overrides"]
        assert f"optimizer.learning_rate={lr}" in child.data.tags["hydra.overrides"]
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_mean_iou")] == [0]
        assert child.data.params["runtime.intra_op_threads"] == "1"  # ONE_THREAD, recorded (docs/reproducibility.md)
    best = max(children, key=lambda c: c.data.metrics["val_mean_iou"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_val_mean_iou"] == pytest.approx(best.data.metrics["val_mean_iou"])
    assert parent.data.params["best.model.base_filters"] == best.data.params["model.base_filters"]
    return {combo: c.data.metrics["val_mean_iou"] for combo, c in zip(combos, children)}


@pytest.fixture(scope="module")
def basic_grid(tmp_path_factory, empty_store):
    tmp_path = tmp_path_factory.mktemp("basic")
    uri, _ = sweep(tmp_path, empty_store, "--multirun", *SWEEP_TINY, *GRID, ONE_THREAD)
    return uri


@pytest.mark.slow
def test_basic_launcher_grid_is_one_parent_with_four_children(basic_grid):
    check_grid(basic_grid)


@pytest.mark.slow
def test_joblib_grid_gives_the_same_study_and_the_same_numbers(tmp_path, empty_store, basic_grid):
    uri, done = sweep(tmp_path, empty_store, "--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SWEEP_TINY, *GRID, ONE_THREAD)
    parallel = check_grid(uri)
    # The jobs' lines interleave on one console: each says which job it is.
    epoch_lines = [line for line in done.stdout.splitlines() if " epoch 1/1 " in f" {line} "]
    assert sorted(line.split("]")[0] for line in epoch_lines) == ["[job 0", "[job 1", "[job 2", "[job 3"], done.stdout
    # Jobs in fresh worker processes score exactly what they scored one after another in one process:
    # nothing (session, seeds, data caches) leaks from one basic-launcher job into the next.
    assert parallel == check_grid(basic_grid)


@pytest.mark.slow
def test_a_failing_job_is_recorded_the_sweep_goes_on_and_exits_non_zero_naming_it_with_submitit_local(tmp_path, empty_store):
    # lr=1e30 makes the loss NaN: found only while training.
    uri, done = sweep(tmp_path, empty_store, "--multirun", "hydra/launcher=submitit_local", *SWEEP_TINY,
                      "optimizer.learning_rate=0.003,1e30", check=False)
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert last.startswith("seglab: 1 of 2 jobs of the sweep failed: job 1 (optimizer.learning_rate=1e+30): FAILED: "), last
    assert "NaN or Inf loss" in last
    client, parent, children = parent_and_children(uri)
    assert parent.info.status == "FINISHED" and f"seglab.report {parent.info.run_id}" in last
    assert parent.data.tags["hydra.launcher"] == "submitit_local"
    assert (parent.data.metrics["jobs_succeeded"], parent.data.metrics["jobs_failed"]) == (1, 1)
    first, second = children
    assert first.info.status == "FINISHED" and first.data.metrics["val_mean_iou"] > 0
    assert second.info.status == "FAILED" and "NaN or Inf loss" in second.data.tags["error"]


def test_a_failed_job_is_one_line_on_the_console_and_its_traceback_is_in_the_jobs_log_file(tmp_path, empty_store):
    # A weights file that cannot be read, found when the job builds its model (as a missing ImageNet file offline
    # is): each job says so in one line, not in a 45-line traceback.
    (tmp_path / "bad.h5").write_text("not HDF5")
    uri, done = sweep(tmp_path, empty_store, "--multirun", *without("model.depth", "model.base_filters"), "model=unet_mobilenet",
                      f"model.encoder.weights={tmp_path / 'bad.h5'}", "loss=ce,dice", check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-3000:]
    failed = [line for line in output.splitlines() if line.startswith("error: job ")]
    assert [line.split(":")[1] for line in failed] == [" job 0 failed", " job 1 failed"], output[-3000:]
    for num, line in enumerate(failed):
        assert f"The weights file {tmp_path / 'bad.h5'} of the MobileNetV2" in line and line.endswith("the sweep goes on"), line
        log_file = Path(line.split("the traceback is in ")[1].split(")")[0])
        assert log_file.parent == tmp_path / "multirun" / str(num) and "Traceback" in log_file.read_text()
    assert [c.info.status for c in parent_and_children(uri)[2]] == ["FAILED", "FAILED"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher,watch", [(("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"), "out.txt"),
                                            (("hydra/launcher=submitit_local",), "multirun/.submitit/*/*_log.out")],
                         ids=["joblib", "submitit_local"])
def test_sigterm_to_a_sweep_ends_its_jobs_and_its_parent_run_killed(tmp_path, empty_store, launcher, watch):
    """Before, the sweep's process died at once: its workers trained on with no parent and the parent run stayed
    RUNNING forever.  SIGTERM comes once a job has printed its first epoch (its run is open), of 50."""
    import psutil

    shutil.copy(empty_store, tmp_path / "m.db")
    uri = f"sqlite:///{tmp_path}/m.db"
    code, said = signal_after("epoch  1/50", signal.SIGTERM, "seglab", "--multirun", *launcher, *SWEEP_TINY, "trainer.epochs=50",
                              "model.base_filters=2,4", ONE_THREAD, f"tracking.uri={uri}", f"hydra.sweep.dir={tmp_path}/multirun",
                              cwd=tmp_path, watch=watch)
    assert code == 143, said[-3000:]
    lines = [line for line in said.splitlines() if line.strip()]
    assert lines[-1].startswith("seglab: sweep stopped (SIGTERM): its jobs are ended and MLflow parent run "), said[-3000:]
    left = [p for p in psutil.process_iter(["cwd", "status", "cmdline"])
            if p.info["cwd"] == str(tmp_path) and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not left, [p.info["cmdline"] for p in left]
    client, parent, children = parent_and_children(uri)
    assert parent.info.status == "KILLED"
    assert parent.data.tags["seglab.killed_reason"].startswith("the sweep was stopped (SIGTERM)")
    assert children and {c.info.status for c in children} == {"KILLED"}, [(c.info.run_name, c.info.status) for c in children]


def test_every_job_is_validated_before_the_first_trains_and_a_bad_one_stops_the_sweep_in_one_line(tmp_path, empty_store):
    # Job 0 is valid, job 1's size is rejected by the schema for a depth-2 U-Net (not a multiple of 4).
    uri, done = sweep(tmp_path, empty_store, "--multirun", *SWEEP_TINY, "data.image_size=32,34", "model.base_filters=2,4", check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and lines == [lines[-1]], done.stderr[-3000:]
    assert lines[-1].startswith("seglab: sweep job 2 (data.image_size=34 model.base_filters=2): data.image_size=34 "), lines
    assert lines[-1].endswith("no job was run: fix that value or leave it out of the sweep"), lines
    client = MlflowClient(uri)
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []  # no parent, no job
    assert not (tmp_path / "multirun").exists()

    # A value that does not compose: Hydra's own message names the override; still before anything opens.
    uri, done = sweep(tmp_path, empty_store, "--multirun", "model.base_filters=4,four", check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and lines == [lines[-1]] and "model.base_filters=four" in lines[-1], done.stderr[-3000:]
    assert MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()]) == []


def test_a_search_is_checked_with_its_fixed_settings_and_one_whose_every_trial_fails_ends_in_one_line(tmp_path, empty_store):
    # A fixed value every trial would share (34 px fits no depth-4 U-Net): refused before anything opens.
    uri, done = sweep(tmp_path, empty_store, "+hparams_search=unet_shapes", "hydra.sweeper.n_trials=2", "data.image_size=34",
                      check=False)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and lines == [lines[-1]], done.stderr[-3000:]
    assert lines[-1].startswith("seglab: every trial of the search: data.image_size=34 is not allowed"), lines
    assert MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()]) == []

    # Trials optuna chooses are validated as each starts: a search space no trial of which is valid (depth 7 and 8
    # are out of range) records each trial FAILED, then ends in one line, its parent FAILED with that line.
    user = tmp_path / "conf" / "hparams_search"
    user.mkdir(parents=True)
    (user / "too_deep.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        defaults:
          - override /hydra/sweeper: optuna
        hydra:
          mode: MULTIRUN
          sweeper:
            direction: maximize
            n_trials: 2
            max_failure_rate: 1.0
            params:
              model.depth: choice(7, 8)
        """))
    uri, done = sweep(tmp_path, empty_store, "--config-dir", str(tmp_path / "conf"), "+hparams_search=too_deep", check=False)
    last = [line for line in done.stderr.splitlines() if line.strip()][-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert last.startswith("seglab: no trial of the search finished"), last
    client, parent, children = parent_and_children(uri)
    assert parent.info.status == "FAILED" and "no trial of the search finished" in parent.data.tags["error"]
    assert [c.info.status for c in children] == ["FAILED", "FAILED"] and all("model.depth" in c.data.tags["error"] for c in children)


def test_a_sweep_that_cannot_be_tracked_or_optimises_the_wrong_way_stops_before_any_job(tmp_path):
    done = run_cli("--multirun", *SWEEP_TINY, "model.base_filters=2,4", "tracking.uri=http://127.0.0.1:9", cwd=tmp_path, check=False)
    assert done.returncode != 0 and "127.0.0.1:9 is not reachable" in done.stderr
    assert not (tmp_path / "multirun").exists() or not list((tmp_path / "multirun").rglob("*.log"))
    done = run_cli("+hparams_search=unet_shapes", "optimize_metric=val_loss", f"tracking.uri=sqlite:///{tmp_path}/m.db",
                   cwd=tmp_path, check=False)
    assert done.returncode != 0 and "add hydra.sweeper.direction=minimize" in done.stderr


def test_command_line_values_win_over_a_presets_search_space_in_the_sweep_definition(compose_cfg):
    from seglab.engine import sweep as seglab_sweep

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        overrides = ["+experiment=shapes_unet_width_lr", "model.base_filters=4"]
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    swept = seglab_sweep.sweep_definition(cfg)["swept"]
    assert "model.base_filters" not in swept and "optimizer.learning_rate" in swept


@pytest.mark.slow
def test_optuna_search_returns_and_logs_the_best_params(tmp_path, empty_store):
    uri, done = sweep(tmp_path, empty_store, "+hparams_search=unet_shapes", "hydra.sweeper.n_trials=3", *without("model.base_filters", "trainer.batch_size"))
    results = yaml.safe_load((tmp_path / "multirun/optimization_results.yaml").read_text())
    assert {"optimizer.learning_rate", "model.base_filters", "trainer.batch_size"} <= set(results["best_params"])
    client, parent, children = parent_and_children(uri)
    assert parent.info.run_name == "unet_shapes" and parent.data.tags["hydra.sweeper"] == "optuna"
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    for key, value in results["best_params"].items():
        logged = parent.data.params[f"best.{key}"]
        assert float(logged) == pytest.approx(value) if isinstance(value, (int, float)) else logged == str(value)
    best = max(children, key=lambda c: c.data.metrics["val_mean_iou"])
    assert results["best_value"] == pytest.approx(best.data.metrics["val_mean_iou"])
    assert parent.data.tags["best_run_id"] == best.info.run_id


@pytest.mark.slow
def test_report_prints_sorts_and_logs_the_table(basic_grid, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "seglab.report", "seglab-shapes", "--tracking-uri", basic_grid, "--format", "markdown",
         "--output", str(tmp_path / "report.csv")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert lines[0].split(" | ")[:5] == ["| job", "status", "overrides", "val_mean_iou", "val_mean_dice"]
    ious = [float(line.split(" | ")[3]) for line in lines[1:]]
    assert len(ious) == 4 and ious == sorted(ious, reverse=True)
    assert all("model.base_filters=" in line and "optimizer.learning_rate=" in line for line in lines[1:])
    csv_lines = (tmp_path / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("job,status,overrides,val_mean_iou,val_mean_dice,epochs,wall_s,images_per_s") and len(csv_lines) == 5
    client, parent, _ = parent_and_children(basic_grid)
    assert {"report.md", "report.csv"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


# --- presets (composed, not run) -------------------------------------------------------------


PRESETS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))


def preset_jobs(name: str) -> list[list[str]]:
    """The overrides of each job the preset launches: its sweep expanded as the basic sweeper expands it
    (one job, no overrides, for a preset without a sweep)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import seglab.config.schema  # noqa: F401  registers the schemas in Hydra's ConfigStore

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"+experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.get("params") or {}
    parsed = OverridesParser.create().parse_overrides([f"{key}={value}" for key, value in params.items()])
    (jobs,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return jobs


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_and_every_job_of_its_sweep_composes_and_validates(name, compose_cfg):
    from seglab.config import schema

    yours = ["data.source.path=DIR", "data.num_classes=3"] if name == "compare_on_my_data" else []  # the user gives the folder
    for job in preset_jobs(name):  # a missing group option or a rejected value fails here, naming the preset
        schema.validate(compose_cfg(f"+experiment={name}", *job, *yours))


@pytest.mark.parametrize("data", ["folder", "arrays", "tfrecord", "coco"])
def test_compare_on_my_data_takes_every_source_of_your_own_data(data, compose_cfg):
    """The preset's test_fraction is a key of every own-data source; before, data=arrays, tfrecord or coco refused it
    (ConfigError: data.source.test_fraction is not a config key) in every job."""
    from seglab.config import schema

    cfg = compose_cfg("+experiment=compare_on_my_data", f"data={data}", "data.source.path=DIR", "data.num_classes=3",
                      "data.class_names=[a,b,c]")
    schema.validate(cfg)
    assert cfg.data.name == data and cfg.data.source.test_fraction == 0.2


def test_presets_and_searches_are_found_from_any_directory(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "seglab", "+experiment=shapes_unet_baseline", "+hparams_search=unet_shapes", "--cfg", "hydra"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    hydra_cfg = yaml.safe_load(done.stdout)["hydra"]
    assert hydra_cfg["runtime"]["choices"]["experiment"] == "shapes_unet_baseline"
    assert hydra_cfg["sweeper"]["sampler"]["seed"] == 1234 and hydra_cfg["sweeper"]["_target_"].endswith("OptunaSweeper")


def test_slurm_launcher_requests_gpus_and_cpus(compose_cfg):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.cpus_per_task >= 1 and launcher.mem_gb >= 1


@pytest.mark.parametrize(
    "overrides",
    [["model=unet,fcn8", "seed=1,2,3"], ["seed=1,2", "loss=ce", "seed=4,5"], ["+x=range(1,4)", "y=a,b", "z=choice(p,q)"], []],
)
def test_sweep_jobs_are_hydras_basic_sweeper_jobs_without_its_private_api(overrides):
    """seglab expands a basic sweep itself (Hydra's BasicSweeper is not public API): the same jobs, in the same order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the reference, in the test only
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from seglab.engine import sweep

    parsed = OverridesParser.create().parse_overrides(overrides)
    (expected,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    assert sweep.expand(parsed) == expected
