"""`python -m seglab.bench [bench.KEY=VALUE ...] [seglab overrides ...]`: training speed, measured.

For each model x precision x XLA setting x data source (synthetic tensors, or the configured
pipeline), back to back and `bench.repeats` times interleaved:

- seglab: the model compiled as `seglab.train` compiles it (seglab's loss and confusion-matrix
  metrics), fitted with seglab's MLflow metrics logger and checkpointer writing to a temporary store;
- plain Keras: the same model, batch and data with `SparseCategoricalCrossentropy` and a bare `fit`,
  as in the TensorFlow segmentation tutorial.

Reported per row (medians over the repeats): steady-state training images/s (the batches after
`bench.warmup`), the seglab / plain Keras throughput ratio, peak host memory (RSS, sampled every
batch), hardware efficiency (forward FLOPs x 3 x images/s over the dense matmul FLOP/s measured at
the start of this invocation, in the precision's compute dtype), and the share of epoch time spent
in logging (seglab's callbacks, timed around each call).  Plus start-up: `python -m seglab --cfg job`,
and a fresh process's time to its first training step.  Prints a table, writes `bench.out` (JSON),
and logs one MLflow run when `bench.tracking_uri` is set.

    python -m seglab.bench bench.models=unet bench.precisions=float32,mixed_bfloat16 model.base_filters=64 data.image_size=128
"""

# Lazy imports: TensorFlow and MLflow load once the options are checked, so `--help` and a bad option answer in a second.

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import psutil
from hydra.utils import instantiate

from seglab import console, errors, tracking
from seglab.cli import helptext
from seglab.config import preflight, schema
from seglab.config.check import require
from seglab.config.data import plain, size_of
from seglab.config.trainer import PRECISIONS
from seglab.data import batches_of
from seglab.tracking import tags

BENCH_EXPERIMENT = "seglab-bench"  # the experiment every bench logs to


@dataclass
class BenchOptions:
    models: list[str] = field(default_factory=lambda: ["unet"])
    precisions: list[str] = field(default_factory=lambda: ["float32"])
    jit: list[bool] = field(default_factory=lambda: [False])
    data: list[str] = field(default_factory=lambda: ["synthetic", "pipeline"])
    steps: int = 20  # training batches timed per measurement, after the warm-up
    warmup: int = 5  # batches left out of the throughput (tracing, caches, autotuning)
    repeats: int = 2  # seglab and plain Keras measured back to back this many times
    matmul_size: int = 2048
    startup: bool = True
    out: str = "bench.json"
    tracking_uri: str | None = None

    def __post_init__(self) -> None:
        for precision in self.precisions:
            require(precision in PRECISIONS, "bench.precisions", precision, f"choose from {', '.join(PRECISIONS)}")
        for source in self.data:
            require(source in ("synthetic", "pipeline"), "bench.data", source, "choose from synthetic, pipeline")
        require(self.steps >= 1, "bench.steps", self.steps, "use an integer >= 1")
        require(self.warmup >= 1, "bench.warmup", self.warmup, "use an integer >= 1 (the first batch traces the step)")
        require(self.repeats >= 1, "bench.repeats", self.repeats, "use an integer >= 1")
        require(self.matmul_size >= 1, "bench.matmul_size", self.matmul_size, "use an integer >= 1")
        require(bool(self.out), "bench.out", self.out, "give the file the JSON report is written to, e.g. bench.out=bench.json")


def parse(argv: list[str]) -> tuple[BenchOptions, list[str]]:
    """`bench.KEY=VALUE` arguments -> options (lists comma-separated); the rest are seglab overrides."""
    options, overrides = {}, []
    for arg in argv:
        if not arg.startswith("bench."):
            name = arg.partition("=")[0]
            require(name not in BenchOptions.__dataclass_fields__, name, arg.partition("=")[2],
                    f"the benchmark's own options start with bench.: write bench.{arg}")
            overrides.append(arg)
            continue
        key, _, value = arg[len("bench."):].partition("=")
        kind = BenchOptions.__dataclass_fields__.get(key)
        require(kind is not None, f"bench.{key}", value, f"use one of {', '.join('bench.' + k for k in BenchOptions.__dataclass_fields__)}")
        default = getattr(BenchOptions(), key)
        if isinstance(default, list):
            items = [v for v in value.split(",") if v]
            require(bool(items), f"bench.{key}", value, "give at least one value (a comma-separated list)")
            options[key] = [_boolean(f"bench.{key}", v) for v in items] if key == "jit" else items
        elif isinstance(default, bool):
            options[key] = _boolean(f"bench.{key}", value)
        elif isinstance(default, int):
            require(value.strip().lstrip("-").isdigit(), f"bench.{key}", value, "give an integer")
            options[key] = int(value)
        else:
            options[key] = value or None
    return BenchOptions(**options), overrides


def _boolean(key: str, value: str) -> bool:
    """true/false (also yes/no, 1/0): anything else is a mistake, not false."""
    word = value.strip().lower()
    require(word in TRUE + FALSE, key, value, "use true or false")
    return word in TRUE


TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")


def matmul_flops(size: int, dtype: str, seconds: float = 1.0) -> float:
    """Dense matmul FLOP/s of this machine now: (size x size) @ (size x size), 2 size^3 FLOPs each."""
    import tensorflow as tf

    a = tf.random.uniform((size, size), dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.matmul(x, x))
    product(a).numpy()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        product(a).numpy()
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def _timing_callback(warmup: int, batch_size: int):
    """`batch_size`: images per `on_train_batch_end` call (Keras calls it once per execution of
    `steps_per_execution` batches)."""
    import keras

    class Timing(keras.callbacks.Callback):
        """Times the batches after the warm-up, samples the process's RSS each batch."""

        def __init__(self):
            super().__init__()
            self.process, self.peak_rss, self.times = psutil.Process(), 0, []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)

        def images_per_second(self) -> float:
            timed = self.times[warmup - 1:]
            return batch_size * (len(timed) - 1) / (timed[-1] - timed[0])

    return Timing()


class _Timed:
    """Wraps a callback and adds up the seconds spent in its epoch-end hook (where seglab logs)."""

    def __init__(self, callback):
        self.callback, self.seconds = callback, 0.0
        original = callback.on_epoch_end

        def on_epoch_end(epoch, logs=None):
            start = time.perf_counter()
            original(epoch, logs)
            self.seconds += time.perf_counter() - start

        callback.on_epoch_end = on_epoch_end


def _batches(cfg, source: str, steps: int):
    """`steps` training batches: random tensors, or the configured pipeline (repeated as needed)."""
    import tensorflow as tf


    (height, width), batch, classes = size_of(cfg.data.image_size), cfg.trainer.batch_size, cfg.data.num_classes
    if source == "synthetic":
        rng = np.random.default_rng(cfg.seed)
        images = rng.uniform(size=(batch, height, width, 3)).astype(np.float32)
        masks = rng.integers(0, classes, size=(batch, height, width)).astype(np.int32)
        return tf.data.Dataset.from_tensors((images, masks)).repeat(steps)
    splits = instantiate(cfg.data.source)
    return batches_of(cfg, splits.train, "train", training=True, about=splits.about.get("train")).repeat().take(steps)


def measure(cfg, source: str, options: BenchOptions, seglab_side: bool, store: str) -> dict:
    """One fit of `warmup + steps` batches in one epoch; throughput, peak RSS and logging seconds."""
    import keras

    from seglab.engine import callbacks, owner, runtime, train

    runtime.setup(cfg.seed, cfg.deterministic, cfg.trainer.precision)
    total = options.warmup + options.steps
    data = _batches(cfg, source, total)
    model = instantiate(cfg.model, num_classes=cfg.data.num_classes, image_size=cfg.data.image_size)
    spe = cfg.trainer.steps_per_execution if seglab_side else 1
    timing = _timing_callback(max(1, options.warmup // spe), cfg.trainer.batch_size * spe)
    logging_seconds = 0.0
    start = time.perf_counter()
    if seglab_side:
        train.compile_model(cfg, model, instantiate(cfg.loss, num_classes=cfg.data.num_classes), steps_per_epoch=total)
        # A temporary store, new for this bench: no run of a dead process to end in it.
        with owner.RunOwner(tracking.Run(store, BENCH_EXPERIMENT, "bench", {})) if store else tracking.NoOpRun() as run, \
                tempfile.TemporaryDirectory() as directory:
            logged = [_Timed(callbacks.MetricsLogger(run, total * cfg.trainer.batch_size)),
                      _Timed(callbacks.Checkpointer(directory, monitor="loss"))]
            model.fit(data, epochs=1, verbose=0, callbacks=[timing, *(t.callback for t in logged)], shuffle=False)
            logging_seconds = sum(t.seconds for t in logged)
    else:
        model.compile(optimizer=keras.optimizers.Adam(cfg.optimizer.learning_rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=cfg.trainer.jit_compile)
        # shuffle=False: a tf.data pipeline shuffles itself (Keras warns that shuffle=True, its default, is ignored).
        model.fit(data, epochs=1, verbose=0, callbacks=[timing], shuffle=False)
    epoch_seconds = time.perf_counter() - start
    from seglab.models.flops import forward_flops

    return {
        "images_per_second": timing.images_per_second(), "peak_rss_mb": timing.peak_rss / 2**20,
        "epoch_seconds": epoch_seconds, "logging_seconds": logging_seconds, "forward_flops": forward_flops(model),
        "compute_dtype": keras.mixed_precision.global_policy().compute_dtype,
        "xla": bool(model.jit_compile),  # what `compile` made of trainer.jit_compile (Keras may turn it off)
    }


def startup_seconds(overrides: list[str]) -> dict[str, float]:
    """Wall seconds of `python -m seglab --cfg job`, and of a fresh process until one training step is done."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seglab", "--cfg", "job", *overrides], env=env, check=True, capture_output=True)
    cfg_job = time.perf_counter() - start
    first_step = (
        "import sys; from seglab.cli import bench; bench.one_step(sys.argv[1:])"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", first_step, *overrides], env=env, check=True, capture_output=True)
    return {"cfg_job_seconds": cfg_job, "first_step_seconds": time.perf_counter() - start}


def one_step(overrides: list[str]) -> None:
    """What `python -m seglab` does up to its first training step: validate, import, build, compile, one batch."""
    cfg = schema.compose(overrides)

    from seglab.engine import runtime, train

    runtime.setup(cfg.seed, cfg.deterministic, cfg.trainer.precision)
    model = instantiate(cfg.model, num_classes=cfg.data.num_classes, image_size=cfg.data.image_size)
    train.compile_model(cfg, model, instantiate(cfg.loss, num_classes=cfg.data.num_classes), steps_per_epoch=1)
    model.fit(_batches(cfg, "synthetic", 1), epochs=1, verbose=0, shuffle=False)


def grid(options: BenchOptions, overrides: list[str]) -> list[tuple[str, str, bool, list[str]]]:
    """(model, precision, XLA, the seglab overrides) of each configuration measured."""
    return [(model_name, precision, jit, [f"model={model_name}", *overrides, f"trainer.precision={precision}",
                                          f"trainer.jit_compile={str(jit).lower()}"])
            for model_name in options.models for precision in options.precisions for jit in options.jit]


def run(options: BenchOptions, overrides: list[str]) -> dict:
    load = os.getloadavg()
    import tensorflow as tf

    peaks = {dtype: matmul_flops(options.matmul_size, dtype) for dtype in {"float32", *(
        "bfloat16" if p == "mixed_bfloat16" else "float16" if p == "mixed_float16" else "float32" for p in options.precisions)}}
    rows = []
    with tempfile.TemporaryDirectory() as store_dir:
        store = f"sqlite:///{store_dir}/bench.db"
        for model_name, precision, jit, job in grid(options, overrides):
            cfg = schema.compose(job)
            for source in options.data:
                print(f"measuring {model_name} {precision} xla={jit} {source} ...", flush=True)
                seglab_runs, plain_runs = [], []
                for _ in range(options.repeats):  # interleaved: both see the same machine load
                    plain_runs.append(measure(cfg, source, options, False, store))
                    seglab_runs.append(measure(cfg, source, options, True, store))
                rows.append(_row(model_name, precision, jit, source, cfg, seglab_runs, plain_runs, peaks))
                print(f"{model_name} {precision} xla={rows[-1]['xla']} {source}: {rows[-1]['images_per_second']:.2f} images/s, "
                      f"plain Keras {rows[-1]['plain_keras_images_per_second']:.2f}", flush=True)  # a long run shows progress
    startup = startup_seconds(overrides) if options.startup else {}
    from seglab.engine import runtime

    runtime.set_precision("float32")
    return {
        "options": asdict(options), "overrides": overrides,
        "machine": {"cpus": os.cpu_count(), "load_average_before": load, "load_average_after": os.getloadavg(),
                    "tensorflow": tf.__version__, "matmul_flops_per_second": peaks,
                    "gpus": len(tf.config.list_physical_devices("GPU"))},
        "startup": startup, "results": rows,
    }


def _row(model_name, precision, jit, source, cfg, seglab_runs, plain_runs, peaks) -> dict:
    median = lambda runs, key: statistics.median(r[key] for r in runs)  # noqa: E731
    images_per_second = median(seglab_runs, "images_per_second")
    flops = seglab_runs[0]["forward_flops"]
    compute = seglab_runs[0]["compute_dtype"]
    return {
        "model": model_name, "precision": precision, "jit_compile": jit, "xla": all(r["xla"] for r in seglab_runs + plain_runs),
        "data": source,
        "image_size": plain(cfg.data.image_size), "batch_size": cfg.trainer.batch_size, "forward_gflops": flops / 1e9,
        "images_per_second": images_per_second,
        "plain_keras_images_per_second": median(plain_runs, "images_per_second"),
        "overhead_ratio": images_per_second / median(plain_runs, "images_per_second"),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in seglab_runs),
        "efficiency": 3 * flops * images_per_second / peaks[compute],
        "logging_share": median([{"s": r["logging_seconds"] / r["epoch_seconds"]} for r in seglab_runs], "s"),
        "seglab_runs": [r["images_per_second"] for r in seglab_runs], "plain_runs": [r["images_per_second"] for r in plain_runs],
    }


def table(report: dict) -> str:
    head = f"{'model':15} {'precision':15} {'xla':5} {'data':9} {'img/s':>8} {'keras':>8} {'ratio':>6} {'eff.':>6} {'RSS MB':>7} {'log %':>6}"
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        lines.append(
            f"{r['model']:15} {r['precision']:15} {str(r['xla']):5} {r['data']:9} {r['images_per_second']:8.2f} "
            f"{r['plain_keras_images_per_second']:8.2f} {r['overhead_ratio']:6.3f} {r['efficiency']:6.1%} {r['peak_rss_mb']:7.0f} "
            f"{r['logging_share']:6.2%}"
        )
    machine = report["machine"]
    lines.append("matmul GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in machine["matmul_flops_per_second"].items())
                 + f" | load average before {machine['load_average_before'][0]:.2f}, after {machine['load_average_after'][0]:.2f}")
    if report["startup"]:
        lines.append(f"start-up: --cfg job {report['startup']['cfg_job_seconds']:.1f} s, "
                     f"first training step {report['startup']['first_step_seconds']:.1f} s")
    return "\n".join(lines)


def bench_run(uri: str, run_tags: dict[str, str], timeout_s: float):
    """A run in `seglab-bench`, owned as a training's is (seglab.engine.owner: never left RUNNING, KILLED on Ctrl-C),
    once the RUNNING runs of that experiment whose process is gone (a bench killed with -9) are ended KILLED."""
    from seglab.engine import claim, owner  # MLflow loads when a bench logs, not for --help or a mistake

    claim.end_dead(uri, BENCH_EXPERIMENT, timeout_s, "seglab.bench")
    return owner.RunOwner(tracking.Run(uri, BENCH_EXPERIMENT, "bench", {**run_tags, **claim.owner_tags()}))


def log_to_mlflow(report: dict, uri: str, timeout_s: float) -> str:
    """The report as a run of `seglab-bench`; its id.  `timeout_s`: when a RUNNING bench run on another host is dead."""
    with bench_run(uri, {tags.BENCH_OVERRIDES: " ".join(report["overrides"]) or "(defaults)"}, timeout_s) as run:
        run.log_params({f"bench.{k}": v for k, v in report["options"].items() if k != "tracking_uri"})
        metrics = {}
        for r in report["results"]:
            prefix = f"{r['model']}.{r['precision']}.{'xla' if r['jit_compile'] else 'noxla'}.{r['data']}"
            for key in ("images_per_second", "plain_keras_images_per_second", "overhead_ratio", "efficiency", "peak_rss_mb", "logging_share"):
                metrics[f"{prefix}.{key}"] = r[key]
        metrics.update({k: v for k, v in report["startup"].items()})
        run.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        run.log_dict(report, "bench.json")
        return run.run_id


def main(argv: list[str]) -> None:
    if helptext.print_usage(argv, __doc__):
        return
    options, overrides = parse(argv)
    preflight.writable_file(options.out, "bench.out")  # now, not after minutes of measuring
    if options.tracking_uri:
        preflight.check_store(options.tracking_uri, key="bench.tracking_uri")
    cfg = schema.compose(overrides)
    for *_, job in grid(options, overrides):  # bad overrides (e.g. XLA with deterministic=true) fail before TensorFlow loads
        schema.compose(job)
    console.quiet(console.is_verbose(cfg))
    report = run(options, overrides)
    Path(options.out).write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"JSON: {options.out}")
    if options.tracking_uri:
        timeout_s = 60 * cfg.trainer.heartbeat_timeout_min
        print(f"MLflow run {log_to_mlflow(report, options.tracking_uri, timeout_s)} at {options.tracking_uri}")


def cli() -> None:
    """`python -m seglab.bench` (seglab/bench.py)."""
    sys.exit(errors.main(main, sys.argv[1:], prog="seglab.bench"))
