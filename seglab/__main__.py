"""`python -m seglab [GROUP=OPTION] [key=value] ...`: compose the config, validate it, train."""

import hydra
from omegaconf import DictConfig

from seglab import schema
from seglab.schema import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    schema.validate(cfg)  # fails in about a second, before TensorFlow is imported
    from seglab import tracking

    tracking.check_reachable(cfg.tracking.uri)  # a server that is down: fail in seconds, before TensorFlow too
    from seglab import train

    return train.run(cfg)


if __name__ == "__main__":
    main()
