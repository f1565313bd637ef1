"""`python -m seglab [GROUP=OPTION] [key=value] ...`: compose the config, validate it, train.
With `--multirun`, each job goes through `sweep.run_job`: a failing job is recorded and the sweep goes on."""

import hydra
from omegaconf import DictConfig

from seglab import schema, sweep
from seglab.schema import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    if sweep.in_multirun():
        return sweep.run_job(cfg, _train)
    schema.validate(cfg)  # fails in about a second, before TensorFlow is imported
    return _train(cfg)


def _train(cfg: DictConfig) -> float:
    from seglab import distribute, tracking

    distribute.check(cfg.trainer.strategy)  # e.g. multi_worker without TF_CONFIG: before TensorFlow loads
    tracking.check_reachable(cfg.tracking.uri)  # a server that is down: fail in seconds, before TensorFlow too
    from seglab import train

    return train.run(cfg)


if __name__ == "__main__":
    main()
