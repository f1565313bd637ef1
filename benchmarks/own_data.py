"""Your own data, measured: the cost of `data=folder` and what it trains, each against the plain way (issue 31,
"Cost that does not grow with the data" and "Done when"); the figures of docs/own-data.md.

    python benchmarks/own_data.py throughput DIR [--images 1000] [--rounds 3] [--passes 3] [--image-size 128]
    python benchmarks/own_data.py stages DIR [--rounds 3] [--image-size 128]   (after throughput wrote DIR/frames)
    python benchmarks/own_data.py memory DIR [--counts 1000 10000] [--frame 160 120] [--caches null file]
    python benchmarks/own_data.py versus-keras DIR [--images 240] [--frame 320 240] [--epochs 8] [--base-filters 16] [--seeds 42 43 44]
    python benchmarks/own_data.py versus-keras DIR --data TREE [--inspect data.source.KEY=VALUE ...] [--epochs 8] [--base-filters 16] [--seeds 42 43 44]
    python benchmarks/own_data.py same-batches DIR [--data TREE] [--inspect ...] [--seglab KEY=VALUE ...]
    python benchmarks/own_data.py swap DIR [--data TREE] [--inspect ...] [--seglab KEY=VALUE ...] [--epochs 8] [--seeds 42 43 44]
    python benchmarks/own_data.py judge LOG [LOG ...] --seeds 60 61 ... [--margin 0.02]

throughput: writes --images 480x360 PNG photos with 8-bit index masks (12 classes and a void 255) in CamVid's
layout (DIR/frames: train/ trainannot/ val/ valannot/) unless they are there, then alternates, --rounds times,
one run of `python -m seglab.data folder ...` (augmentation off, data.cache=null; its "later passes" images/s) and
one of a plain tf.data pipeline over the same training files in its own process (list files, tf.io.read_file,
decode_png, resize to the same size, batch, prefetch, AUTOTUNE; the mean of its passes after the first), and one of
the same plain pipeline with tf.data's autotuner off (as seglab's runs), so all share the machine's load alike.
Prints each run and the medians and their ratios, in images/s and in CPU milliseconds per image (process time over
all threads, passes after the first): on a machine other programs load, images/s follows their load, the CPU cost per
image hardly does.

stages: in one process set up as seglab's (op determinism on, as conf/config.yaml has it), the plain pipeline and
data=folder's training pipeline cut after each stage (read + decode: the folder source's split; + resize: the shared
pipeline's `prepare`; + shuffle, [0, 1], batch: `batches_of`, what throughput times), one pass of each alternately,
--rounds times; prints the median CPU-ms per image and images/s of each: what each stage adds.

memory: for each of --counts it writes that many smaller PNG pairs (--frame, 160x120 by default, so that 10,000 are
written in about a minute) under DIR/n<count>, and runs `python -m seglab.data folder ... --passes 2` (the fewest
it takes: with a file cache the first pass writes it, the second reads it) with each of --caches; prints the
child's peak resident memory (os.wait4's ru_maxrss) as a table (`--caches null file memory` adds data.cache=memory,
the one that grows with the data, as a control).

versus-keras: writes pets-like photos (seglab.data.pets_like's drawing, --frame wide and high: the centre rows of
a square picture) as CamVid-style folders (train/ val/ test/ 60/20/20 with trainannot/ ...), masks 0 background,
1 animal, 255 void on the outline band; runs `python -m seglab.data inspect` on them and trains with exactly the
command it prints plus tracking.uri, trainer.epochs and model.base_filters; scores the logged model on the test
split with `python -m seglab.evaluate` (the same data overrides).  Then, in its own process, a plain Keras script:
a functional U-Net of conf/model/unet.yaml's shape (depth, --base-filters, batch norm with its momentum, dropout
where seglab puts it), the same input size (what inspect printed, images stretched to it), epochs and batch size
(conf/trainer/default.yaml), Adam at conf/optimizer/adam.yaml's rate (constant), sparse cross-entropy with the
void label ignored, images read with tf.data the plain way, the last epoch's weights; its test mIoU from the
confusion matrix over the test split without the void pixels, the mean over the classes present, as seglab's.
Both are trained once per --seeds value (seglab's `seed=`, the script's Keras seed and shuffle seed; the data stay
the same): one seed's test mIoU on a few dozen test images moves by a few hundredths, so the table gives each seed,
the mean ± sample standard deviation of each column and of the paired difference.
With --data TREE it writes nothing and runs the same on TREE, a data set as you have it: any layout data=folder
reads, with a test split (its own, or the data.source.test_fraction inspect prints) and 8-bit grey or palette label
masks (the plain script maps them through the label_map inspect prints, e.g. 0/255 masks to 0/1; --inspect passes
data.source settings to inspect, e.g. which of several label sets); DIR holds only the work (its
MLflow store, and plain.json: the files of each split as seglab splits them, which the plain script reads).

same-batches: what versus-keras compares, checked without training, on the same data and settings: for each split,
seglab's batches (data=folder's source and pipeline as training and evaluation read them, unshuffled) against the
plain script's batches of the same files (the largest image difference, mask pixels that differ, ignored pixels on
each side), and seglab's U-Net against the script's (parameters; layers, settings and initialisers in order).

swap: which side's batches or which side's model and compile a difference in training follows: per seed, in one
process, the script's U-Net and compile and seglab's (its model config and seglab.engine.train.compile_model: schedule,
loss, metrics), each fitted on the script's training batches and on seglab's (data=folder's source and pipeline as
training reads them, shuffled by seed and epoch), each after keras.utils.set_random_seed(seed); prints the last
epoch's training loss of the four, a row per seed.

judge: the test of docs/own-data.md fixed before it ran: the `seed N: seglab X, plain Keras Y` lines versus-keras
printed into the LOG files (several runs' logs together; a seed's lines must agree) for exactly --seeds; prints each,
and once every seed is in, the paired difference seglab - script with its 95 % t interval and the verdict: its lower
end above -MARGIN, seglab reaches the script within MARGIN; its upper end below 0, it falls short; else not settled.

Everything runs through the real commands, so the figures include what a user gets (seglab's deterministic
tf.data order, its header check before the first pass is not timed: the pipeline's passes are).
"""

# Lazy imports: TensorFlow and Keras load only in the child processes that time or train the plain way.

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
CLASSES = 12  # CamVid's 11 classes and its void-free "other", as its SegNet copy has
VOID = 255
NO_AUGMENT = ("data.augment.hflip=false", "data.augment.crop_min=1.0", "data.augment.brightness=0", "data.augment.contrast=0")
SPLIT_SHARES = {"train": 0.6, "val": 0.2, "test": 0.2}  # versus-keras


def cpu() -> str:
    """The CPU, as lscpu names it, and the cores this process may use."""
    try:
        done = subprocess.run(["lscpu"], capture_output=True, text=True, check=True)
        name = re.search(r"Model name:\s*(.+)", done.stdout).group(1).strip()
        name += " with AVX-512" if re.search(r"\bavx512f\b", done.stdout) else ""
    except (OSError, subprocess.CalledProcessError, AttributeError):
        name = "unknown CPU"
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def command(module: str, *args: str, cwd: Path) -> str:
    """`python -m module args` to the end; its output, or the script stops with its error."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        raise SystemExit(f"python -m {module} {' '.join(args)} failed:\n{done.stderr[-3000:]}{done.stdout[-2000:]}")
    return done.stdout + done.stderr


# --- generated data --------------------------------------------------------------------------------


def street_like(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-sized picture of label regions (blocks of a coarse grid) coloured per class with sensor-like noise,
    and its 8-bit index mask (labels 0..CLASSES-1, a few void pixels): as costly to decode as a real frame."""
    cells = rng.integers(0, CLASSES, (max(height // 40, 2), max(width // 40, 2)), dtype=np.uint8)
    mask = np.asarray(Image.fromarray(cells).resize((width, height), Image.NEAREST))
    palette = rng.uniform(30, 225, (CLASSES, 3))
    image = palette[mask] + rng.normal(0, 8, (height, width, 3))
    mask = mask.copy()
    mask[: max(height // 60, 1)] = VOID  # an unlabelled strip, as annotators leave at frame edges
    return np.clip(image, 0, 255).astype(np.uint8), mask


def pets_frame(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """seglab.data.pets_like's photo drawn square and cut to its centre rows; trimap -> 0 background, 1 animal, void outline."""
    from seglab.data import pets_like  # only versus-keras draws animals

    image, trimap = pets_like.render(rng, (width, width))
    top = (width - height) // 2
    image, trimap = image[top:top + height], trimap[top:top + height]
    mask = np.select([trimap == pets_like.PET, trimap == pets_like.BORDER], [1, VOID], 0).astype(np.uint8)
    return image, mask


def write_folders(root: Path, counts: dict[str, int], frame: tuple[int, int], draw, seed: int = 0) -> Path:
    """CamVid's layout under root: <split>/NAME.png and <split>annot/NAME.png.  Written once: a root holding a
    `done` file is kept as it is."""
    if (root / "done").exists():
        return root
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(exist_ok=True)
        for i in range(count):
            image, mask = draw(rng, *frame)
            Image.fromarray(image).save(root / split / f"{split}_{i:05d}.png")
            Image.fromarray(mask, mode="L").save(root / f"{split}annot" / f"{split}_{i:05d}.png")
    (root / "done").write_text(json.dumps({"counts": counts, "frame": frame}))
    return root


def folder_overrides(root: Path, image_size: int, batch_size: int, cache: str | None) -> list[str]:
    names = ",".join(f"c{i}" for i in range(CLASSES))
    return [f"data.source.path={root}", f"data.num_classes={CLASSES}", f"data.class_names=[{names}]",
            f"data.ignore_index={VOID}", f"data.image_size={image_size}", f"data.cache={cache or 'null'}",
            f"trainer.batch_size={batch_size}", *NO_AUGMENT]


# --- throughput -------------------------------------------------------------------------------------


OFF = "plain tf.data, autotune off"


def seglab_rate(root: Path, args, work: Path) -> tuple[float, float]:
    """(images/s, CPU-ms per image) of the later passes, as `python -m seglab.data` prints them."""
    out = command("seglab.data", "folder", *folder_overrides(root, args.image_size, args.batch_size, None),
                  "--passes", str(args.passes), "--samples", "1", "--out", str(work / "samples.png"), cwd=work)
    found = re.search(r"later passes (\d+) images/s .*?([\d.]+) CPU-ms per image", out)
    return float(found.group(1)), float(found.group(2))


def plain_rate(root: Path, args, work: Path, autotune: str = "on") -> tuple[float, float]:
    out = subprocess.run([sys.executable, __file__, "plain", str(root), "--image-size", str(args.image_size),
                          "--batch-size", str(args.batch_size), "--passes", str(args.passes), "--autotune", autotune],
                         cwd=work, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if out.returncode != 0:
        raise SystemExit(f"the plain pipeline failed:\n{out.stderr[-3000:]}")
    found = re.search(r"plain tf.data: ([\d.]+) images/s, ([\d.]+) CPU-ms per image", out.stdout)
    return float(found.group(1)), float(found.group(2))


def plain_pipeline(directory: Path, image_size: int, batch_size: int, autotune: bool = True):
    """The plain tf.data pipeline over DIR/train + DIR/trainannot: list, read, decode_png, resize, batch, prefetch
    (AUTOTUNE; `autotune=False`: tf.data's autotuner off, as seglab's pipeline runs, AUTOTUNE meaning every core)."""
    import tensorflow as tf  # only the processes that time a pipeline load TensorFlow

    images = sorted(str(p) for p in (directory / "train").glob("*.png"))
    masks = [str(directory / "trainannot" / Path(p).name) for p in images]
    size = (image_size, image_size)

    def load(image_path, mask_path):
        image = tf.io.decode_png(tf.io.read_file(image_path), channels=3)
        mask = tf.io.decode_png(tf.io.read_file(mask_path), channels=1)
        image = tf.image.resize(tf.cast(image, tf.float32), size) / 255.0
        return image, tf.cast(tf.image.resize(mask, size, method="nearest")[..., 0], tf.int32)

    ds = tf.data.Dataset.from_tensor_slices((images, masks)).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    if not autotune:
        options = tf.data.Options()
        options.autotune.enabled = False
        ds = ds.with_options(options)
    return ds


PIPELINES = {"data=folder": seglab_rate, "plain tf.data": plain_rate,
             OFF: lambda root, args, work: plain_rate(root, args, work, autotune="off")}


def one_pass(ds) -> tuple[float, float]:
    """(images/s, CPU-ms per image over all of this process's threads) of one pass over `ds`."""
    start, cpu, seen = time.perf_counter(), time.process_time(), 0
    for image, _ in ds:
        seen += int(image.shape[0])
    return seen / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / max(seen, 1)


def stages(args) -> None:
    """One process, seglab's runtime set-up (op determinism as the config has it): data=folder's pipeline cut after
    each stage, and the plain one, timed alternately (one warm-up pass each, then --rounds passes); CPU-ms per image
    says what each stage costs whatever the machine's load."""
    import tensorflow as tf  # this subcommand times pipelines in its own process

    from hydra.utils import instantiate

    from seglab.config import schema
    from seglab.data import batches_of, pipeline
    from seglab.engine import runtime

    root, size = args.directory / "frames", args.image_size
    cfg = schema.compose(["data=folder", *folder_overrides(root, size, args.batch_size, None)])
    runtime.setup(cfg.seed, cfg.deterministic)
    train = instantiate(cfg.data.source).train
    prepare = lambda image, mask: pipeline.prepare(image, mask, size)
    variants = {
        "plain tf.data": lambda: plain_pipeline(root, size, args.batch_size),
        "data=folder: read + decode": lambda: train.batch(args.batch_size),
        "... + resize (pipeline.prepare)": lambda: train.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(args.batch_size),
        "... + shuffle, [0, 1], batch (training batches)": lambda: batches_of(cfg, train, "train", training=True),
    }
    passes = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, build in variants.items():
            ds = build()
            one_pass(ds)
            passes[name].append(one_pass(ds))
    print(f"\n### data=folder's stages, one process ({cpu()}, load average {load_average()})\n")
    print("| pipeline | CPU-ms per image, median | images/s, median |\n|---|---|---|")
    for name, done in passes.items():
        print(f"| {name} | {statistics.median(c for _, c in done):.2f} | {statistics.median(r for r, _ in done):.0f} |")


def plain(args) -> None:
    """One process: the plain pipeline, images/s and CPU-ms per image of passes 2.. ."""
    ds = plain_pipeline(args.directory, args.image_size, args.batch_size, autotune=args.autotune == "on")
    rates, cpu_ms = zip(*(one_pass(ds) for _ in range(args.passes)))
    print(f"plain tf.data: {statistics.mean(rates[1:]):.1f} images/s, {statistics.mean(cpu_ms[1:]):.2f} CPU-ms per image "
          f"(passes: {', '.join(f'{r:.0f}' for r in rates)})")


def throughput(args) -> None:
    root = write_folders(args.directory / "frames", {"train": args.images, "val": max(args.images // 10, 2)},
                         (480, 360), street_like)
    work = args.directory / "work"
    work.mkdir(exist_ok=True)
    rows = []
    for round_ in range(1, args.rounds + 1):
        for name, rate in PIPELINES.items():
            rows.append((name, *rate(root, args, work), load_average()))
            print(f"round {round_}: {name:<13} {rows[-1][1]:7.1f} images/s, {rows[-1][2]:.2f} CPU-ms per image  "
                  f"(load average {rows[-1][3]})", flush=True)
    names = tuple(PIPELINES)
    median = {name: statistics.median(r for n, r, _, _ in rows if n == name) for name in names}
    cost = {name: statistics.median(c for n, _, c, _ in rows if n == name) for name in names}
    print(f"\n### Reading {args.images} 480x360 PNG pairs ({cpu()})\n")
    print(f"resized to {args.image_size}, batch {args.batch_size}, passes 2-{args.passes} of each run, {args.rounds} runs each, alternating\n")
    print("| pipeline | images/s, each run | median | CPU-ms per image, each run | median |\n|---|---|---|---|---|")
    for name in names:
        print(f"| {name} | {', '.join(f'{r:.0f}' for n, r, _, _ in rows if n == name)} | {median[name]:.0f} | "
              f"{', '.join(f'{c:.2f}' for n, _, c, _ in rows if n == name)} | {cost[name]:.2f} |")
    print(f"\ndata=folder / plain tf.data: {median['data=folder'] / median['plain tf.data']:.2f} images/s (the issue asks >= 0.90); "
          f"CPU per image {cost['data=folder'] / cost['plain tf.data']:.2f} of plain's")
    print(f"data=folder / {OFF}: {median['data=folder'] / median[OFF]:.2f} images/s; "
          f"CPU per image {cost['data=folder'] / cost[OFF]:.2f} of its")


# --- memory ---------------------------------------------------------------------------------------


def peak_rss_mib(args: list[str], cwd: Path) -> float:
    """Run `python args` to the end; its peak resident memory (its own, from os.wait4) in MiB."""
    child = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"})
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"python {' '.join(args)} failed:\n{output[-3000:].decode(errors='replace')}")
    return usage.ru_maxrss / 1024  # Linux: kilobytes


def memory(args) -> None:
    work = args.directory / "work"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for count in args.counts:
        root = write_folders(args.directory / f"n{count}", {"train": count, "val": max(count // 10, 2)},
                             tuple(args.frame), street_like)
        for cache in args.caches:
            prefix = {"null": None, "memory": "memory"}.get(cache, str(work / f"cache-n{count}" / "c"))
            if cache == "file":  # a fresh file cache: the first pass writes it, the second reads it
                for old in Path(prefix).parent.glob("c-*"):
                    old.unlink()
                Path(prefix).parent.mkdir(exist_ok=True)
            overrides = folder_overrides(root, args.image_size, args.batch_size, prefix)
            mib = peak_rss_mib(["-m", "seglab.data", "folder", *overrides, "--passes", "2", "--samples", "1",
                                "--out", str(work / "samples.png")], work)
            rows.append((count, cache, mib))
            print(f"{count} images, data.cache={rows[-1][1]}: peak RSS {mib:.0f} MiB  (load average {load_average()})", flush=True)
    print(f"\n### Peak memory of `python -m seglab.data folder ... --passes 2` ({cpu()})\n")
    print(f"{args.frame[0]}x{args.frame[1]} PNG pairs, resized to {args.image_size}, batch {args.batch_size}, augmentation off\n")
    print("| images | data.cache | peak RSS MiB |\n|---|---|---|")
    for count, cache, mib in rows:
        print(f"| {count:,} | {cache} | {mib:.0f} |")


# --- versus plain Keras ---------------------------------------------------------------------------


def inspected(root: Path, work: Path, settings: list[str] = ()) -> list[str]:
    """The overrides of the command `python -m seglab.data inspect ROOT SETTINGS` prints last."""
    out = command("seglab.data", "inspect", str(root), *settings, cwd=work)
    line = [line for line in out.splitlines() if line.startswith("python -m seglab ")][-1]
    print(f"inspect says:\n  {line}", flush=True)
    return shlex.split(line)[3:]


def seglab_test_miou(overrides: list[str], args, work: Path, seed: int = 42) -> tuple[float, float]:
    """Train with the inspected overrides and only a store, epochs, width and `seed`; evaluate on test.  (test mIoU,
    seconds of its epochs)"""
    from mlflow import MlflowClient  # the parent process alone reads the store

    from seglab.tracking import tags

    uri = f"sqlite:///{work}/mlflow.db"
    command("seglab", *overrides, f"tracking.uri={uri}", f"trainer.epochs={args.epochs}", f"model.base_filters={args.base_filters}",
            f"seed={seed}", cwd=work)
    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    trained = [r for r in client.search_runs(experiments, "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
               if tags.TRAINING_RUN not in r.data.tags][0]
    seconds = sum(m.value for m in client.get_metric_history(trained.info.run_id, "epoch_seconds"))
    data = [o for o in overrides if o.startswith("data")]
    command("seglab.evaluate", f"model_uri=runs:/{trained.info.run_id}/model", *data, f"tracking.uri={uri}", cwd=work)
    scored = client.search_runs(experiments, f"tags.`{tags.TRAINING_RUN}` = '{trained.info.run_id}'",
                                order_by=["attributes.start_time DESC"])[0]
    return scored.data.metrics["test_mean_iou"], seconds


def keras_test_miou(overrides: list[str], args, work: Path, seed: int = 42) -> tuple[float, float]:
    """The plain Keras script, in its own process, on WORK/plain.json's files at the inspected size and classes.
    (test mIoU, seconds)"""
    value = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if "=" in o}
    height, width = json.loads(value["data.image_size"]) if value["data.image_size"].startswith("[") else [int(value["data.image_size"])] * 2
    done = subprocess.run([sys.executable, __file__, "keras", str(work / "plain.json"), "--size", str(height), str(width),
                           "--num-classes", value["data.num_classes"], "--epochs", str(args.epochs),
                           "--base-filters", str(args.base_filters), "--seed", str(seed)], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if done.returncode != 0:
        raise SystemExit(f"the plain Keras script failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["test_mean_iou"], result["seconds"]


def compared_tree(args) -> tuple[Path, str]:
    """The data versus-keras and same-batches compare on: --data TREE as it is, or pets-like frames they write."""
    if args.data:  # a tree you have, used as it is
        return args.data, f"{args.data.name} ({args.data})"
    counts = {split: max(round(share * args.images), 2) for split, share in SPLIT_SHARES.items()}
    return write_folders(args.directory / "frames", counts, tuple(args.frame), pets_frame), f"{args.frame[0]}x{args.frame[1]} pets-like frames"


def compared(args) -> tuple[str, Path, list[str], dict]:
    """What versus-keras, same-batches and swap compare on: the tree's description, the work folder, the overrides
    (what inspect printed, --seglab over it) and WORK/plain.json's content (the files of each split, for the script)."""
    root, what = compared_tree(args)
    work = args.directory / "work"
    work.mkdir(exist_ok=True)
    overrides = with_settings(inspected(root, work, args.inspect), args.seglab)
    plain_files(overrides, work)
    return what, work, overrides, json.loads((work / "plain.json").read_text())


def size_settings(overrides: list[str]) -> str:
    """The data.resize and data.image_size overrides, as a table's caption names them."""
    return " ".join(o for o in overrides if o.startswith(("data.resize", "data.image_size")))


def versus_keras(args) -> None:
    what, work, overrides, plain = compared(args)
    counts = {split: len(pairs) for split, pairs in plain["splits"].items()}
    rows = []
    for seed in args.seeds:  # the same data; the seed changes the initial weights, the order and the augmentation
        rows.append((seed, seglab_test_miou(overrides, args, work, seed)[0], keras_test_miou(overrides, args, work, seed)[0]))
        print(f"seed {seed}: seglab {rows[-1][1]:.3f}, plain Keras {rows[-1][2]:.3f}  (load average {load_average()})", flush=True)
    batch = OmegaConf.load(CONF / "trainer" / "default.yaml").batch_size
    print(f"\n### seglab against a plain Keras U-Net on {what} ({cpu()})\n")
    print(f"{counts['train']} train / {counts['val']} val / {counts['test']} test, {args.epochs} epochs, batch {batch}, "
          f"U-Net base_filters {args.base_filters}; seeds {', '.join(map(str, args.seeds))}"
          f"{'; seglab with ' + ' '.join(args.seglab) if args.seglab else ''}\n")
    print("| seed | seglab + what inspect printed, test mIoU | plain Keras script, test mIoU | seglab - plain |\n|---|---|---|---|")
    for seed, ours, theirs in rows:
        print(f"| {seed} | {ours:.3f} | {theirs:.3f} | {ours - theirs:+.3f} |")
    columns = list(zip(*rows))[1:]
    differences = [a - b for a, b in zip(*columns)]
    print(f"| mean ± sd | {spread(columns[0])} | {spread(columns[1])} | {spread(differences, sign=True)} |")
    if len(differences) > 1:
        print("\nseglab - plain, 95 %% t interval: %+.3f to %+.3f" % paired_interval(differences)[1:])


SEED_LINE = re.compile(r"^seed (\d+): seglab (\d\.\d+), plain Keras (\d\.\d+)", re.M)  # versus_keras' line


def paired_interval(differences: list[float]) -> tuple[float, float, float]:
    """The mean of paired differences and its 95 % t interval (low, high)."""
    from scipy import stats  # MLflow's dependency

    mean = statistics.mean(differences)
    half = stats.t.ppf(0.975, len(differences) - 1) * statistics.stdev(differences) / len(differences) ** 0.5
    return mean, mean - half, mean + half


def judge(args) -> None:
    found: dict[int, tuple[float, float]] = {}
    for log in args.logs:
        for seed, ours, theirs in SEED_LINE.findall(log.read_text()):
            pair = (float(ours), float(theirs))
            if found.setdefault(int(seed), pair) != pair:
                raise SystemExit(f"{log}: seed {seed} reads {pair}, another log {found[int(seed)]}: which run counts?")
    rows = [(seed, *found[seed]) for seed in args.seeds if seed in found]
    print("| seed | seglab | plain Keras script | seglab - plain |\n|---|---|---|---|")
    for seed, ours, theirs in rows:
        print(f"| {seed} | {ours:.3f} | {theirs:.3f} | {ours - theirs:+.3f} |")
    if len(rows) < len(args.seeds):
        print(f"\n{len(rows)} of the {len(args.seeds)} seeds run (missing: {' '.join(str(s) for s in args.seeds if s not in found)}): "
              "judged when all are in")
        return
    mean, low, high = paired_interval([ours - theirs for _, ours, theirs in rows])
    verdict = (f"seglab reaches the script within {args.margin}" if low > -args.margin else
               "seglab falls short of the script" if high < 0 else "not settled")
    print(f"\nseglab - plain over {len(rows)} seeds: {mean:+.3f}, 95 % t interval {low:+.3f} to {high:+.3f}: {verdict}")


def with_settings(overrides: list[str], settings: list[str]) -> list[str]:
    """`overrides` with each KEY=VALUE of `settings` in place of the same key's (or added): a variant of what inspect
    printed (e.g. data.resize=stretch), for both sides (the plain script reads the size and classes from them)."""
    keys = {setting.split("=", 1)[0] for setting in settings}
    if settings:
        print(f"and, over it: {' '.join(settings)}", flush=True)
    return [o for o in overrides if o.split("=", 1)[0] not in keys] + list(settings)


def same_batches(args) -> None:
    """Whether versus-keras compares like with like, without training: the batches seglab trains and scores on
    (data=folder with what inspect printed, --seglab over it; unshuffled) against the plain script's of the same files,
    split by split, and seglab's U-Net against the script's."""
    from hydra.utils import instantiate  # this command's own process: TensorFlow loads here

    from seglab.config import schema
    from seglab.config.data import size_of
    from seglab.data import batches_of

    what, _, overrides, plain = compared(args)
    cfg = schema.compose(overrides)
    size, batch = size_of(cfg.data.image_size), cfg.trainer.batch_size
    void = cfg.data.ignore_index  # what seglab's loss and metrics leave out; the script's loss, VOID (its ignore_class)
    splits = instantiate(cfg.data.source)
    print(f"\n### seglab's batches against the plain Keras script's on {what} ({cpu()})\n")
    print(f"{size_settings(overrides)}, batch {batch}\n")
    print("| split | images | largest image difference, [0, 1] | mask pixels that differ | ignored pixels, seglab / plain |\n|---|---|---|---|---|")
    for split, pairs in plain["splits"].items():
        names = splits.about[split].names
        if len(names) != len(pairs) or not all(image.endswith(name) for (image, _), name in zip(pairs, names)):
            raise SystemExit(f"{split}: seglab reads other files, or in another order, than plain.json holds")
        largest, differ, ignored, images = 0.0, 0, [0, 0], 0
        ours = batches_of(cfg, getattr(splits, split), split, cache=False)
        for (image, mask), (their_image, their_mask) in zip(ours, keras_split(plain, split, size, batch, None)):
            mask, their_mask = mask.numpy(), their_mask.numpy().astype(np.int32)
            largest = max(largest, float(np.abs(image.numpy() - their_image.numpy()).max()))
            differ += int((mask != their_mask).sum())
            ours_ignored = int((mask == void).sum()) if void is not None else 0
            ignored = [ignored[0] + ours_ignored, ignored[1] + int((their_mask == VOID).sum())]
            images += len(mask)
        print(f"| {split} | {images} of {len(pairs)} | {largest:.5f} | {differ} of {images * size[0] * size[1]} | {ignored[0]} / {ignored[1]} |")
    model_cfg = cfg.model
    ours = instantiate(model_cfg, num_classes=cfg.data.num_classes, image_size=list(size))
    theirs = unet(size, cfg.data.num_classes, model_cfg.base_filters, model_cfg.depth, model_cfg.dropout, model_cfg.bn_momentum)
    same = layer_signature(ours) == layer_signature(theirs)
    print(f"\nU-Nets: seglab's {ours.count_params():,} parameters, the script's {theirs.count_params():,}; the same layers, "
          f"settings and initialisers in the same order: {'yes' if same else 'NO'}  (uint8 rounding before [0, 1]: up to "
          f"{0.5 / 255:.5f})")


def swap(args) -> None:
    import keras  # this command's own process: TensorFlow loads here
    from hydra.utils import instantiate

    from seglab.config import schema
    from seglab.config.data import size_of
    from seglab.data import batches_of, pipeline
    from seglab.engine import train

    what, _, overrides, files = compared(args)
    print(f"\n### The last epoch's training loss: each U-Net and compile on each side's batches, {what} ({cpu()})\n")
    print(f"{size_settings(overrides)}, {args.epochs} epochs, U-Net base_filters {args.base_filters}\n")
    print("| seed | script's U-Net, script's batches | script's U-Net, seglab's batches | seglab's U-Net, script's batches "
          "| seglab's U-Net, seglab's batches |\n|---|---|---|---|---|")
    for seed in args.seeds:
        cfg = schema.compose([*overrides, f"seed={seed}", f"trainer.epochs={args.epochs}", f"model.base_filters={args.base_filters}"])
        size, batch, classes = size_of(cfg.data.image_size), cfg.trainer.batch_size, cfg.data.num_classes
        splits = instantiate(cfg.data.source)
        steps = pipeline.steps_per_epoch(pipeline.count(splits.train), batch)
        losses = []
        for ours in (False, True):
            for ours_batches in (False, True):
                keras.utils.set_random_seed(seed)
                if ours:
                    model = instantiate(cfg.model, num_classes=classes, image_size=list(size))
                    train.compile_model(cfg, model, train.build_loss(cfg, None), steps)
                else:
                    model = unet(size, classes, args.base_filters, cfg.model.depth, cfg.model.dropout, cfg.model.bn_momentum)
                    plain_compile(model)
                if ours_batches:
                    batches = batches_of(cfg, splits.train, "train", training=True, epochs=range(args.epochs))
                    fitted = model.fit(batches, epochs=args.epochs, steps_per_epoch=steps, verbose=0, shuffle=False)
                else:
                    fitted = model.fit(keras_split(files, "train", size, batch, seed), epochs=args.epochs, verbose=0)
                losses.append(fitted.history["loss"][-1])
        print(f"| {seed} | {' | '.join(f'{loss:.4f}' for loss in losses)} |", flush=True)


def layer_signature(model) -> list[tuple]:
    """Each layer's kind, the settings that shape what it computes or how it starts, and its weights' shapes."""
    keys = ("filters", "kernel_size", "strides", "padding", "use_bias", "rate", "momentum", "epsilon", "pool_size",
            "activation", "kernel_initializer")
    return [(type(layer).__name__, {key: layer.get_config().get(key) for key in keys},
             [tuple(weight.shape) for weight in layer.weights]) for layer in model.layers if type(layer).__name__ != "InputLayer"]


def plain_files(overrides: list[str], work: Path) -> dict[str, list[list[str]]]:
    """The image and mask files of each split as seglab splits them (data=folder's own pairing and seeded split:
    which files are compared is not what is measured), and the label table of inspect's label_map, written to
    WORK/plain.json for the plain script, which decodes, maps and resizes them itself.  Exits when the data has no
    test split or masks the plain script cannot read (it reads grey labels)."""
    from seglab.config import schema
    from seglab.data import DataError, folder

    cfg = schema.compose(overrides)
    source = cfg.data.source
    try:
        _, found = folder.locate(Path(source.path), source.image_dir, source.mask_dir, source.mask_suffix,
                                 OmegaConf.to_container(source.lists) if source.lists else None, source.list_format)
        splits = folder.with_validation(found, source.val_fraction, source.test_fraction, source.seed)
    except DataError as err:
        raise SystemExit(f"{source.path}: {err}") from None
    if "test" not in splits:
        raise SystemExit(f"{source.path}: has no test split (a test folder or list, or data.source.test_fraction): "
                         f"both sides are scored on it")
    modes = {Image.open(mask).mode for pairs in splits.values() for _, mask, _ in pairs[:20]}
    if not (modes <= {"L"} or modes <= {"P"}):
        raise SystemExit(f"{source.path}: masks of mode {sorted(modes)}: the plain script reads 8-bit grey or palette "
                         f"label masks only")
    label_map = OmegaConf.to_container(source.label_map) if source.label_map else None
    lut = folder.label_table(label_map, cfg.data.ignore_index, "index")
    files = {name: [[str(image), str(mask)] for image, mask, _ in pairs] for name, pairs in splits.items()}
    work.mkdir(parents=True, exist_ok=True)
    (work / "plain.json").write_text(json.dumps({"splits": files, "lut": None if lut is None else lut.tolist(),
                                                 "palette": modes == {"P"}}))
    return files


def spread(values, sign: bool = False) -> str:
    """mean ± sample standard deviation (± 0 of one value)."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{'+' if sign else ''}.3f} ± {sd:.3f}"


def unet(size: tuple[int, int], num_classes: int, base_filters: int, depth: int, dropout: float, bn_momentum: float):
    """The U-Net of keras-io's segmentation examples, at conf/model/unet.yaml's shape."""
    import keras  # the plain Keras script's own process
    from keras import layers

    def block(x, filters):
        for _ in range(2):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(x)
            x = layers.BatchNormalization(momentum=bn_momentum)(x)
            x = layers.ReLU()(x)
        return x

    inputs = keras.Input((*size, 3))
    x, skips = inputs, []
    for level in range(depth):
        x = block(x, base_filters * 2**level)
        x = layers.Dropout(dropout)(x) if level == depth - 1 else x
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Dropout(dropout)(block(x, base_filters * 2**depth))
    for level in reversed(range(depth)):
        x = layers.Conv2DTranspose(base_filters * 2**level, 2, strides=2, kernel_initializer="he_normal")(x)
        x = block(layers.Concatenate()([skips[level], x]), base_filters * 2**level)
    return keras.Model(inputs, layers.Conv2D(num_classes, 1)(x))


def keras_split(files: dict, split: str, size: tuple[int, int], batch_size: int, shuffle_seed: int | None):
    import tensorflow as tf  # the plain Keras script's own process

    images, masks = zip(*files["splits"][split])
    lut = tf.constant(files["lut"], tf.int32) if files["lut"] else None

    def load(image_path, mask_path):
        image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
        if files["palette"]:  # a palette PNG's indices, the way VOC scripts read them (TensorFlow gives its colours)
            mask = tf.numpy_function(lambda p: np.asarray(Image.open(p.decode()))[..., None], [mask_path], tf.uint8)
            mask.set_shape([None, None, 1])
        else:
            mask = tf.io.decode_image(tf.io.read_file(mask_path), channels=1, expand_animations=False)
        mask = tf.image.resize(mask, size, method="nearest")[..., 0]
        mask = tf.gather(lut, tf.cast(mask, tf.int32)) if lut is not None else mask
        return tf.image.resize(tf.cast(image, tf.float32), size) / 255.0, mask

    ds = tf.data.Dataset.from_tensor_slices((list(images), list(masks)))
    ds = ds.shuffle(len(images), seed=shuffle_seed) if shuffle_seed is not None else ds
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def plain_compile(model) -> None:
    """The plain script's compile: Adam at conf/optimizer/adam.yaml's rate, constant; sparse cross-entropy without VOID."""
    import keras  # the process that trains (the keras script's, swap's)

    model.compile(optimizer=keras.optimizers.Adam(OmegaConf.load(CONF / "optimizer" / "adam.yaml").learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=VOID))


def keras_script(args) -> None:
    """One process: fit the plain U-Net on the train files of FILE (plain.json), score its test files; a JSON line."""
    import keras  # the plain Keras script's own process

    keras.utils.set_random_seed(args.seed)
    files = json.loads(args.directory.read_text())
    model_cfg = OmegaConf.load(CONF / "model" / "unet.yaml")
    batch = OmegaConf.load(CONF / "trainer" / "default.yaml").batch_size
    size = tuple(args.size)
    model = unet(size, args.num_classes, args.base_filters, model_cfg.depth, model_cfg.dropout, model_cfg.bn_momentum)
    plain_compile(model)
    start = time.perf_counter()
    history = model.fit(keras_split(files, "train", size, batch, args.seed), epochs=args.epochs,
                        validation_data=keras_split(files, "val", size, batch, None), verbose=2).history
    seconds = time.perf_counter() - start
    cm = np.zeros((args.num_classes, args.num_classes), np.int64)
    for images, masks in keras_split(files, "test", size, batch, None):
        truth, predicted = masks.numpy().ravel().astype(np.int64), np.argmax(model.predict_on_batch(images), -1).ravel()
        labelled = truth != VOID
        cm += np.bincount(truth[labelled] * args.num_classes + predicted[labelled],
                          minlength=args.num_classes**2).reshape(cm.shape)
    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    print(json.dumps({"test_mean_iou": float(np.mean(tp[union > 0] / union[union > 0])), "seconds": seconds,
                      "train_loss": history["loss"], "val_loss": history["val_loss"]}))


# --- command line ---------------------------------------------------------------------------------


def parse(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="what", required=True)
    each = {name: commands.add_parser(name) for name in ("throughput", "stages", "memory", "versus-keras", "same-batches", "swap", "plain", "keras")}
    for sub in each.values():
        sub.add_argument("directory", type=Path)
    for name in ("throughput", "stages", "memory", "plain"):
        each[name].add_argument("--image-size", type=int, default=128, help="data.image_size (square, stretched)")
        each[name].add_argument("--batch-size", type=int, default=8)
    for name in ("throughput", "plain"):
        each[name].add_argument("--passes", type=int, default=3)
    each["plain"].add_argument("--autotune", choices=("on", "off"), default="on", help="tf.data's autotuner (Options.autotune)")
    each["throughput"].add_argument("--images", type=int, default=1000)
    for name in ("throughput", "stages"):
        each[name].add_argument("--rounds", type=int, default=3, help="runs (stages: timed passes) of each pipeline, alternating")
    each["memory"].add_argument("--counts", type=int, nargs="+", default=[1000, 10000])
    each["memory"].add_argument("--frame", type=int, nargs=2, default=[160, 120], metavar=("WIDTH", "HEIGHT"))
    each["memory"].add_argument("--caches", nargs="+", choices=("null", "file", "memory"), default=["null", "file"])
    for name in ("versus-keras", "same-batches", "swap"):
        each[name].add_argument("--images", type=int, default=240, help="split 60/20/20 into train/val/test")
        each[name].add_argument("--frame", type=int, nargs=2, default=[320, 240], metavar=("WIDTH", "HEIGHT"))
        each[name].add_argument("--data", type=Path, help="use this data set as it is (any layout data=folder reads, with "
                                "a test split and grey label masks) instead of writing frames; --images, --frame unused")
        each[name].add_argument("--inspect", nargs="*", default=[], metavar="data.source.KEY=VALUE",
                                help="settings given to inspect, as a user would (e.g. which of several label sets)")
        each[name].add_argument("--seglab", nargs="*", default=[], metavar="KEY=VALUE",
                                help="overrides in place of what inspect printed, e.g. data.resize=stretch")
    for name in ("versus-keras", "keras", "swap"):
        each[name].add_argument("--epochs", type=int, default=8)
        each[name].add_argument("--base-filters", type=int, default=OmegaConf.load(CONF / "model" / "unet.yaml").base_filters)
    for name in ("versus-keras", "swap"):
        each[name].add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44],
                                help="versus-keras: one seglab run and one plain run per seed (seglab's seed=, the script's "
                                "Keras seed); swap: its four fits per seed")
    each["keras"].add_argument("--size", type=int, nargs=2, required=True, metavar=("HEIGHT", "WIDTH"))
    each["keras"].add_argument("--num-classes", type=int, required=True)
    each["keras"].add_argument("--seed", type=int, default=42)
    each["judge"] = commands.add_parser("judge")
    each["judge"].add_argument("logs", type=Path, nargs="+", metavar="LOG", help="versus-keras' output")
    each["judge"].add_argument("--seeds", type=int, nargs="+", required=True, help="the seeds fixed before the runs")
    each["judge"].add_argument("--margin", type=float, default=0.02, help="how far below the script still reaches it")
    args = parser.parse_args(argv)
    if args.what == "judge":
        return args
    args.directory = args.directory.resolve()
    args.data = args.data.resolve() if getattr(args, "data", None) else None
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.what == "judge":  # reads logs; writes nothing
        return judge(args)
    if args.what != "keras":  # keras' DIRECTORY is the file of splits versus-keras wrote
        args.directory.mkdir(parents=True, exist_ok=True)
    run = {"throughput": throughput, "stages": stages, "memory": memory, "versus-keras": versus_keras, "same-batches": same_batches,
           "swap": swap, "plain": plain, "keras": keras_script}
    run[args.what](args)


if __name__ == "__main__":
    main()
