"""The five architectures and the six losses compared on generated pets-like photos: the figures of
docs/models.md and docs/losses-and-metrics.md ("when to pick which").

    python benchmarks/compare_on_pets_like.py DIR [--trainval 200] [--test 100] [--epochs 10] [--image-size 64]
        [--what architectures losses] [--jobs 2] [--skip JOB ...]

Writes the photos to DIR/pets (`seglab.data.pets_like`: cats and dogs on textured backgrounds with
trimaps, the real archive's layout), then trains, each with `python -m seglab` and the same seed, recipe
and data (`data=pets data.source.kind=folder`, cross-entropy, the default schedule): every
architecture of `+experiment=compare_architectures` (fcn8 and unet_mobilenet from random weights, as
the KerasHub models: no downloads here), and the default U-Net with every loss of
`+experiment=compare_losses`.  Each job logs its best epoch's model; `python -m seglab.evaluate` then
scores it on the test split in inference mode.  Prints one markdown table per comparison: validation
mIoU of the best epoch, test mIoU and the border class's test IoU (the thin trimap class, where the
losses differ), and the seconds of training.  Everything goes to DIR/mlflow.db.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mlflow import MlflowClient
from omegaconf import OmegaConf

from seglab.tracking import tags

CONF = Path(__file__).resolve().parents[1] / "conf"
DOWNLOADED_ENCODER = ("fcn8", "unet_mobilenet")  # their ImageNet encoder files cannot be downloaded here


def swept(preset: str, group: str) -> list[str]:
    """The options of `group` that `+experiment=preset` sweeps: one list, the preset's."""
    return str(OmegaConf.load(CONF / "experiment" / f"{preset}.yaml").hydra.sweeper.params[group]).split(",")


def seglab(module: str, *args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"python -m {module} {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def job(name: str, overrides: tuple[str, ...], data: tuple[str, ...], uri: str, cwd: Path) -> dict:
    """Train one configuration, score its logged model on the test split; its row of the table.  A job whose
    run already finished in the store (an earlier, interrupted call of this script) is not trained again."""
    client = MlflowClient(uri)

    def runs(where: str) -> list:  # the finished runs matching `where`, the newest first
        if not experiments:
            experiments.extend(e.experiment_id for e in client.search_experiments(filter_string="name = 'seglab-pets'"))
        return client.search_runs(experiments, f"{where} and attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"]) if experiments else []

    experiments: list[str] = []  # seglab-pets' id, looked up once it exists

    if not runs(f"attributes.run_name = '{name}'"):
        seglab("seglab", *overrides, *data, f"tracking.uri={uri}", f"tracking.run_name={name}", "tracking.log_model=best",
               f"hydra.run.dir={cwd}/outputs/{name}", cwd=cwd)
    run = runs(f"attributes.run_name = '{name}'")[0]
    training = f"tags.`{tags.TRAINING_RUN}` = '{run.info.run_id}'"
    if not runs(training):
        seglab("seglab.evaluate", f"model_uri=runs:/{run.info.run_id}/model", *data, f"tracking.uri={uri}", cwd=cwd)
    scored = runs(training)[0]
    train_seconds = sum(m.value for m in client.get_metric_history(run.info.run_id, "epoch_seconds"))
    return {"name": name, "params": run.data.tags.get(tags.PARAMETERS, ""),
            "val_mean_iou": max(m.value for m in client.get_metric_history(run.info.run_id, "val_mean_iou")),
            "test_mean_iou": scored.data.metrics["test_mean_iou"],
            "test_iou_border": scored.data.metrics.get("test_iou_border", float("nan")), "train_s": train_seconds}


def table(title: str, rows: list[dict]) -> str:
    lines = [f"### {title}", "", "| job | parameters | val mIoU (best epoch) | test mIoU | test IoU border | training s |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["test_mean_iou"]):
        params = f"{int(r['params']):,}" if str(r["params"]).isdigit() else r["params"]
        lines.append(f"| {r['name']} | {params} | {r['val_mean_iou']:.3f} | {r['test_mean_iou']:.3f} | "
                     f"{r['test_iou_border']:.3f} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--trainval", type=int, default=200)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--what", nargs="+", choices=("architectures", "losses"), default=["architectures", "losses"])
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time")
    parser.add_argument("--skip", nargs="*", default=[], metavar="JOB", help="jobs left out, e.g. arch-deeplabv3plus")
    args = parser.parse_args()
    cwd = args.directory.resolve()
    cwd.mkdir(parents=True, exist_ok=True)
    if not (cwd / "pets").exists():
        seglab("seglab.data.pets_like", str(cwd / "pets"), "--trainval", str(args.trainval), "--test", str(args.test), cwd=cwd)
    uri = f"sqlite:///{cwd}/mlflow.db"
    data = ("data=pets", "data.source.kind=folder", f"data.source.path={cwd / 'pets'}", f"data.image_size={args.image_size}",
            f"trainer.epochs={args.epochs}", "trainer.mask_samples=0", "seed=42")
    jobs = []
    if "architectures" in args.what:
        jobs += [("architectures", f"arch-{m}", (f"model={m}", "loss=ce", *(("model.encoder.weights=null",)
                                                                          if m in DOWNLOADED_ENCODER else ())))
                 for m in swept("compare_architectures", "model")]
    if "losses" in args.what:
        jobs += [("losses", f"loss-{loss}", ("model=unet", f"loss={loss}")) for loss in swept("compare_losses", "loss")]
    jobs = [j for j in jobs if j[1] not in args.skip]
    MlflowClient(uri).search_experiments()  # the store's tables made once, before parallel jobs open it
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda j: (j[0], job(j[1], j[2], data, uri, cwd)), jobs))
    setting = (f"{args.trainval} trainval / {args.test} test pets-like photos at {args.image_size} px, {args.epochs} epochs, "
               f"batch {OmegaConf.load(CONF / 'trainer' / 'default.yaml').batch_size}, seed 42, random initialisation")
    for what in args.what:
        print(table(f"{what} ({setting})", [r for w, r in rows if w == what]), end="\n\n")


if __name__ == "__main__":
    main()
