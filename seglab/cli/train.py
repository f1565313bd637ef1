"""`python -m seglab [GROUP=OPTION] [key=value] ...`: compose the config, validate it, train.
With `--multirun`, each job goes through `sweep.run_job`: a failing job is recorded and the sweep goes on."""

# Lazy imports: TensorFlow loads only after validation, the path and store preflight and the strategy check.

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seglab import console, errors, tracking
from seglab.cli import helptext  # noqa: F401  the --help resolver
from seglab.config import preflight, schema
from seglab.config.schema import CONF_DIR
from seglab.engine import distribute, sweep

log = logging.getLogger(__name__)
STARTING = ("starting: loading TensorFlow, building the model and the data, then tracing the training step "
            "(the first epoch's line comes last)")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    if sweep.in_multirun():
        console.quiet(console.is_verbose(cfg))  # another Keras backend was refused before the sweep started
        return sweep.run_job(cfg, _train)
    return errors.main(_run, cfg, prog="seglab")  # a mistake: one line, exit code 2 (also before the job starts: `cli`)


def _run(cfg: DictConfig) -> float:
    console.quiet(console.is_verbose(cfg))  # before TensorFlow loads: its C++ notices are read from the environment
    schema.validate(cfg)  # fails in about a second, before TensorFlow is imported
    return _train(cfg)


def _train(cfg: DictConfig) -> float:
    preflight.check_paths(cfg, HydraConfig.get().runtime.output_dir)  # paths and store, before MLflow and TensorFlow
    preflight.check_batches(cfg)
    trainer = cfg.trainer  # e.g. multi_worker without TF_CONFIG: before TensorFlow loads
    distribute.check(trainer.strategy, trainer.jit_compile, trainer.steps_per_execution)
    # A server that is down: fail in seconds, before TensorFlow too.  A new SQLite store is made when the run opens,
    # after the data is read: a data set refused before then leaves nothing, not even an empty store.
    tracking.check_reachable(cfg.tracking.uri, create=False)
    # What the 10-30 s before the first epoch's line are spent on, said before they start.
    log.info(STARTING)
    from seglab.engine import train

    return train.run(cfg)


def cli() -> None:
    """The `seglab` command and `python -m seglab`: user mistakes are one line (seglab.errors)."""
    errors.hydra_main(main)

