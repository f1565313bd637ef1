"""Config composition for every group option, and the schema rejecting bad values fast."""

import resource
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from seglab.config import schema
from tests.conftest import CONF_DIR, ROOT, run_cli

GROUPS = ("model", "loss", "data", "optimizer", "scheduler", "trainer", "tracking")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


# Cheap sizes, and data each data option can read here (generated; no downloads).
CHEAP = {
    "model": ["data.image_size=32", "model.encoder.weights=null", "model.fc_width=8", "model.base_filters=4", "model.depth=2"],
    "data": ["data.image_size=32", "data.source.train_size=4", "data.source.val_size=2"],
}


def _cheap(group: str, option: str, tmp_path: Path) -> list[str]:
    if group == "data" and option == "pets":
        from tests.test_pets import write_archive

        write_archive(tmp_path / "pets", trainval=4, test=1)
        return ["data.image_size=32", "data.source.kind=folder", f"data.source.path={tmp_path / 'pets'}"]
    if group == "data" and option == "coco_cat":
        from tests.test_coco_cat import write_coco

        return ["data.image_size=32", f"data.source.path={write_coco(tmp_path / 'coco')}", f"data.source.cache_dir={tmp_path / 'cache'}"]
    if group == "data" and option == "coco":
        from tests.test_coco import write_coco as write_coco_categories

        return ["data.image_size=32", f"data.source.path={write_coco_categories(tmp_path / 'coco')}",
                f"data.source.cache_dir={tmp_path / 'cache'}"]  # the classes: its file's categories
    if group == "data" and option in ("arrays", "tfrecord"):
        from tests.test_arrays import notes_layout
        from tests.test_tfrecord import write_notes_records

        notes_layout(tmp_path, n_train=4, n_val=2) if option == "arrays" else write_notes_records(tmp_path, 4, 2)
        return ["data.image_size=32", f"data.source.path={tmp_path}", "data.num_classes=3", "data.class_names=[a,b,c]"]
    if group == "data" and option == "folder":
        from tests.test_folder import write_split

        write_split(tmp_path / "train", tmp_path / "trainannot", ["a", "b"])
        write_split(tmp_path / "val", tmp_path / "valannot", ["c"])
        return ["data.image_size=32", f"data.source.path={tmp_path}", "data.num_classes=3", "data.class_names=[a,b,c]"]
    if group == "model" and option == "deeplabv3plus":
        return ["data.image_size=32", "model.depth=18"]  # its depth is ResNet's
    if group == "model" and option == "segformer":
        return ["data.image_size=64", "model.decoder_width=16"]  # KerasHub's MiT builds from 64 px
    return CHEAP.get(group, [])


_ABSENT = object()


def _applies(cfg, override: str) -> bool:
    """The option has this key (model.fc_width is FCN's only, model.depth U-Net's)."""
    return OmegaConf.select(cfg, override.split("=")[0], default=_ABSENT) is not _ABSENT


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_validates_and_builds(compose_cfg, group, option, tmp_path):
    """Each option builds what it promises: a model that maps images to per-class logits, a loss that
    gives a finite value, a data source with train and validation examples, a Keras optimizer."""
    cheap = [o for o in _cheap(group, option, tmp_path) if _applies(compose_cfg(f"{group}={option}"), o)]
    cfg = compose_cfg(f"{group}={option}", *cheap)
    validated = schema.validate(cfg)
    assert validated.data.num_classes == len(validated.data.class_names)
    if "_target_" not in cfg[group]:
        return  # trainer, tracking: plain settings, read by seglab.train
    import keras
    import numpy as np
    from hydra.utils import instantiate

    classes = cfg.data.num_classes
    if group == "model":
        model = instantiate(cfg.model, num_classes=classes, image_size=cfg.data.image_size)
        size = cfg.data.image_size
        assert model(np.zeros((1, size, size, 3), "float32")).shape == (1, size, size, classes)
    elif group == "loss":
        args = {"num_classes": classes}
        if isinstance(cfg.loss.get("class_weights"), str):  # computed from the data by seglab.train
            args["class_weights"] = [1.0] * classes
        loss = instantiate(cfg.loss, **args)
        value = loss(np.zeros((1, 4, 4), "int32"), np.zeros((1, 4, 4, classes), "float32"))
        assert np.isfinite(float(value))
    elif group == "data":
        splits = instantiate(cfg.data.source)
        for split in (splits.train, splits.val):
            image, mask = next(iter(split))
            assert image.shape[-1] == 3 and mask.shape[:2] == image.shape[:2]
    elif group == "optimizer":  # as training builds it: optimizer.ema and the schedule are seglab's, not Keras' keys
        from seglab.engine import train

        assert isinstance(train.build_optimizer(cfg, steps_per_epoch=1), keras.optimizers.Optimizer)


def test_defaults_are_the_documented_ones(compose_cfg, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the tests' own MLflow calls set it in this process
    cfg = compose_cfg()
    assert cfg.model._target_ == "seglab.models.unet.build"
    assert cfg.loss._target_ == "seglab.losses.CrossEntropy"
    assert cfg.data.name == "shapes"
    assert cfg.tracking.uri == "sqlite:///mlflow.db"
    assert cfg.deterministic is True
    assert cfg.data.source.image_size == cfg.data.image_size  # interpolated


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.epochs=-1", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("data.image_size=40", "data.image_size"),  # not a multiple of 2**depth = 16
        ("model.dropout=1.5", "model.dropout"),
        ("optimizer.learning_rate=0", "optimizer.learning_rate"),
        ("optimize_metric=val_accuracy", "optimize_metric"),
        ("data.num_classes=4", "data.class_names"),
        ("model.batch_norm=true model.bn_momentum=1.0", "model.bn_momentum"),
        ("model=unet_mobilenet model.bn_momentum=0", "model.bn_momentum"),
        ("optimizer=sgd optimizer.momentum=1.5", "optimizer.momentum"),
        ("optimizer=adamw optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
        ("scheduler=cosine scheduler.warmup_epochs=15", "scheduler.warmup_epochs"),  # not below trainer.epochs (8)
        ("scheduler=poly scheduler.min_learning_rate=0.1", "scheduler.min_learning_rate"),  # above the optimizer's
        ("scheduler=poly scheduler.power=0", "scheduler.power"),
        ("data.class_names=[object,object,boundary]", "data.class_names"),
        ("scheduler=step scheduler.gamma=0", "scheduler.gamma"),
        ("scheduler=step scheduler.step_epochs=0", "scheduler.step_epochs"),
        ("tracking.log_model=worst", "tracking.log_model"),
        ("trainer.worst_samples=-1", "trainer.worst_samples"),
        ("trainer.profile_batches=[5,3]", "trainer.profile_batches"),
        ("trainer.profile_batches=[0,3]", "trainer.profile_batches"),
        ("trainer.profile_batches=[4]", "trainer.profile_batches"),
        ("optimizer.ema_momentum=1.0", "optimizer.ema_momentum"),
        ("optimizer=sgd optimizer.ema_momentum=-0.1", "optimizer.ema_momentum"),
        ("trainer.gradient_accumulation_steps=0", "trainer.gradient_accumulation_steps"),
        ("trainer.early_stopping_patience=0", "trainer.early_stopping_patience"),
    ],
)
def test_schema_rejects_out_of_range_values_naming_the_key(compose_cfg, override, key):
    with pytest.raises(schema.ConfigError, match=key.replace(".", r"\.")):
        schema.validate(compose_cfg(*override.split()))


def test_registering_needs_a_logged_model(compose_cfg):
    assert schema.validate(compose_cfg("tracking.register_as=shapes-unet")).tracking.register_as == "shapes-unet"
    with pytest.raises(schema.ConfigError, match=r"tracking\.register_as='shapes-unet' .*keep tracking\.log_model on"):
        schema.validate(compose_cfg("tracking.register_as=shapes-unet", "tracking.log_model=false"))


def test_image_size_error_suggests_a_valid_size(compose_cfg):
    with pytest.raises(schema.ConfigError, match="multiple of 16"):
        schema.validate(compose_cfg("data.image_size=40"))


def test_print_config_prints_without_tensorflow(tmp_path):
    done = run_cli("--cfg", "job", cwd=tmp_path, env={"PYTHONVERBOSE": ""})
    assert "_target_: seglab.models.unet.build" in done.stdout
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", "import sys, seglab.__main__, seglab.config.schema; print('tensorflow' in sys.modules)"],
        capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)},
    )
    assert probe.stdout.strip() == "False"


@pytest.mark.parametrize(
    "args,expected",
    [
        (("trainer.epochz=3",), "trainer.epochz is not a config key"),
        (("trainer.epochs=abc",), "trainer.epochs"),
        (("model=unett",), "model=unett: no such option in conf/model/; did you mean unet?"),
        (("trainer.epochs=-2",), "trainer.epochs=-2 is not allowed"),
    ],
)
def test_cli_rejects_bad_input_quickly_with_nonzero_exit(tmp_path, args, expected):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = run_cli(*args, cwd=tmp_path, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime  # the command's own work, whatever the load
    assert done.returncode != 0
    assert expected in done.stderr + done.stdout
    assert cpu < 10, f"bad input took {cpu:.1f} CPU seconds to reject"
    assert not (tmp_path / "mlflow.db").exists()  # rejected before any run was opened


@pytest.mark.parametrize(
    "override,key",
    [
        ('data.class_names=[object,"back(ground)",boundary]', "data.class_names"),  # MLflow rejects '(' in metric names
        ("loss.ignore_index=2", "loss.ignore_index"),  # a real class cannot be ignored by the loss alone
    ],
)
def test_schema_rejects_values_that_would_fail_mid_training(compose_cfg, override, key):
    with pytest.raises(schema.ConfigError, match=key.replace(".", r"\.")):
        schema.validate(compose_cfg(override))


def test_a_learning_rate_orders_of_magnitude_off_is_a_warning_not_a_refusal(compose_cfg, caplog):
    from seglab.config import schema

    with caplog.at_level("WARNING"):
        schema.validate(compose_cfg("optimizer.learning_rate=3"))
    assert "optimizer.learning_rate=3 is far outside Adam's usual range" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        schema.validate(compose_cfg("optimizer=sgd", "optimizer.learning_rate=0.1"))
    assert "learning_rate" not in caplog.text


def test_batches_are_checked_against_a_counted_split_too(compose_cfg):
    """A folder's size is known only once counted (engine/train.py calls this then)."""
    from seglab.config.check import ConfigError
    from seglab.config.trainer import check_batches

    trainer = compose_cfg("trainer.batch_size=16", "trainer.overfit_batches=3", "trainer.limit_batches=99").trainer
    check_batches(trainer, 33, "counted")  # 3 batches of 16; limit_batches is only a cap
    with pytest.raises(ConfigError, match=r"trainer.overfit_batches=3 .* has 2 batches"):
        check_batches(trainer, 32, "counted")
    with pytest.raises(ConfigError, match=r"trainer.batch_size=16 .* use at most 10"):
        check_batches(trainer, 10, "counted")


def test_every_optimizer_option_sets_the_ema_momentum_the_schema_takes_for_unchanged():
    """optimizer.ema_momentum other than EMA_MOMENTUM without optimizer.ema=true is refused: each YAML's default must be it."""
    from seglab.config.optimizer import EMA_MOMENTUM

    for path in sorted(Path(CONF_DIR, "optimizer").glob("*.yaml")):
        assert OmegaConf.load(path).ema_momentum == EMA_MOMENTUM, path


def test_every_command_takes_its_store_from_mlflow_tracking_uri_unless_the_command_line_names_one(compose_cfg, monkeypatch):
    """Issue 32: training ignored $MLFLOW_TRACKING_URI while seglab.report honoured it."""
    from seglab.cli import export, predict, report

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert compose_cfg().tracking.uri == "sqlite:///elsewhere.db"
    assert compose_cfg("tracking.uri=sqlite:///given.db").tracking.uri == "sqlite:///given.db"
    for config in (predict.PredictConfig, export.ExportConfig):
        assert OmegaConf.structured(config).tracking.uri == "sqlite:///elsewhere.db"
    with pytest.raises(schema.ConfigError, match=r"^MLFLOW_TRACKING_URI=sqlite:///elsewhere.db: there is no database"):
        report.main(["my-sweep"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # empty: unset, as MLflow reads it
    assert compose_cfg().tracking.uri == "sqlite:///mlflow.db"
    with pytest.raises(schema.ConfigError, match=r"^--tracking-uri=sqlite:///mlflow.db: there is no database"):
        report.main(["my-sweep"])


def test_launcher_options_that_run_no_job_are_refused_naming_the_key():
    from seglab.config import launcher

    with pytest.raises(schema.ConfigError, match=r"^hydra.launcher.n_jobs=0 is not allowed"):
        launcher.check(OmegaConf.create({"_target_": launcher.JOBLIB + "joblib_launcher.JoblibLauncher", "n_jobs": 0}))
    with pytest.raises(schema.ConfigError, match=r"^hydra.launcher.timeout_min=0 is not allowed"):
        launcher.check(OmegaConf.create({"_target_": launcher.SUBMITIT + "submitit_launcher.LocalLauncher", "timeout_min": 0}))
    launcher.check(OmegaConf.create({"_target_": launcher.JOBLIB + "joblib_launcher.JoblibLauncher", "n_jobs": -1}))
    launcher.check(OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}))
