"""What uploading the training state to the run's artifacts costs per epoch (trainer.checkpoint_every).

    python benchmarks/checkpoint_upload.py [overrides ...] [--tracking-uri URI] [--repeats N]

Builds the configured model (default: the default U-Net), writes its full training state and best
model as training does (seglab.checkpoint), and times `tracking.Run.log_checkpoint` (upload both,
move the `seglab.checkpoint` tag, delete the previous upload) `--repeats` times.  Prints the file
sizes and the seconds per upload (median, min, max).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import seglab.config.schema  # noqa: F401  registers the schemas
from seglab.config.schema import CONF_DIR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--tracking-uri", default=None, help="default: a SQLite store in a temporary directory")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=args.overrides)

    from seglab import tracking
    from seglab.engine import checkpoint, train

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        uri = args.tracking_uri or f"sqlite:///{work}/m.db"
        model = instantiate(cfg.model, num_classes=cfg.data.num_classes, image_size=cfg.data.image_size)
        model.compile(optimizer=train.build_optimizer(cfg, steps_per_epoch=1), loss="sparse_categorical_crossentropy")
        model.optimizer.build(model.trainable_variables)
        state, best = work / "last.state.npz", work / "best.keras"
        checkpoint.save_state(state, model, checkpoint.TrainingState(epoch=1, best=0.0, best_epoch=0))
        checkpoint.save_model(best, model)
        seconds = []
        with tracking.Run(uri, "seglab-benchmark", "checkpoint-upload", {}) as run:
            for epoch in range(1, args.repeats + 1):
                start = time.perf_counter()
                run.log_checkpoint([best, state], epoch)
                seconds.append(time.perf_counter() - start)
        mb = lambda p: p.stat().st_size / 1e6
        print(
            f"model {cfg.model._target_} ({model.count_params():,} params) at {cfg.data.image_size} px, tracking.uri={uri}: "
            f"state {mb(state):.1f} MB + best model {mb(best):.1f} MB; upload per checkpoint "
            f"median {statistics.median(seconds):.2f} s (min {min(seconds):.2f}, max {max(seconds):.2f}, {len(seconds)} uploads)"
        )


if __name__ == "__main__":
    main()
