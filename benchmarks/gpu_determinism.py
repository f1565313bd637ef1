"""On a GPU: does each of seglab's model builders train bit-identically twice with determinism on, and how
much faster is `mixed_bfloat16` than float32? (a probe for a lent GPU machine; figures in docs/reproducibility.md)

    KERAS_BACKEND=jax python benchmarks/gpu_determinism.py [--image-size 128] [--out results.json]

What it runs, and what it does not: the GPU machine this project is lent has no package registry and takes
64 MiB of files a call, and TensorFlow with the CUDA 12 libraries it is built against is over 1.5 GB, so
seglab's own training loop (TensorFlow: tf.data, its losses and metrics) cannot run there. What can is Keras
3 with the machine's JAX: this builds every model with seglab's own builders (`seglab/models/*.build`, the
YAML defaults of `conf/model/*.yaml`, random initialisation), and trains each with Keras' `fit` on
generated shapes (sparse softmax cross-entropy, Adam, dropout and batch norm as configured) twice, each time
in a fresh process under XLA's deterministic GPU ops (`--xla_gpu_deterministic_ops=true`, the JAX
counterpart of TensorFlow's op determinism), then compares every weight and the loss history bit for bit.
The timing trains the same models at a larger size in float32 and in `mixed_bfloat16`.

"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("unet", "fcn8", "unet_mobilenet", "deeplabv3plus", "segformer")
DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
NUM_CLASSES = 3


def build(name: str, image_size: int):
    import yaml

    sys.path.insert(0, str(ROOT))
    import importlib

    options = {k: v for k, v in yaml.safe_load((ROOT / "conf/model" / f"{name}.yaml").read_text()).items()
               if k not in ("defaults", "_target_")}
    if "encoder" in options:
        options["encoder"] = {**options["encoder"], "weights": None}
    return importlib.import_module(f"seglab.models.{name}").build(NUM_CLASSES, image_size, **options)


def shapes(n: int, size: int, seed: int = 0):
    """Noisy pictures of a rectangle (class 1) and a disc (class 2) on a background (class 0)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 0.2, (n, size, size, 3)).astype("float32")
    y = np.zeros((n, size, size), "int32")
    rows, cols = np.mgrid[:size, :size]
    for i in range(n):
        r0, c0 = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        box = (rows >= r0) & (rows < r0 + h) & (cols >= c0) & (cols < c0 + w)
        cr, cc = rng.integers(size // 4, 3 * size // 4, 2)
        disc = (rows - cr) ** 2 + (cols - cc) ** 2 < (rng.integers(size // 10, size // 4)) ** 2
        x[i][box] += rng.uniform(0.3, 0.8, 3)
        x[i][disc] = rng.uniform(0.2, 1.0, 3)
        y[i][box], y[i][disc] = 1, 2
    return x.clip(0, 1), y


def compiled(model):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def train(name: str, image_size: int, images: int, epochs: int, out: str) -> None:
    """One deterministic training; its weights and losses to `out` (.npz)."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = compiled(build(name, image_size))
    x, y = shapes(images, image_size)
    history = model.fit(x, y, batch_size=8, epochs=epochs, shuffle=True, verbose=0)
    arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(model.get_weights())}
    np.savez(out, loss=np.asarray(history.history["loss"], "float64"), **arrays)


def speed(name: str, image_size: int, batch: int, steps: int, out: str) -> None:
    """Training images/s of `name` in float32 and mixed_bfloat16 (after a warm-up epoch that compiles)."""
    import keras

    found = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        keras.utils.set_random_seed(0)
        model = compiled(build(name, image_size))
        x, y = shapes(batch * steps, image_size, seed=1)
        model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, epochs=1, verbose=0)  # compile
        start = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        found[policy] = batch * steps / (time.perf_counter() - start)
        keras.backend.clear_session()
    Path(out).write_text(json.dumps(found))


def child(args: list[str], timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_FLAGS": DETERMINISTIC, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True, timeout=timeout)
        code, text = done.returncode, done.stderr
    except subprocess.TimeoutExpired:
        code, text = 124, f"timed out after {timeout:.0f} s"
    return code, "\n".join(text.strip().splitlines()[-3:]), time.perf_counter() - start


def difference(a: str, b: str) -> str | None:
    """None when every array in both files is identical in every bit; else the first that is not."""
    import numpy as np

    with np.load(a) as first, np.load(b) as second:
        for key in first.files:
            if first[key].tobytes() != second[key].tobytes():
                gap = float(np.max(np.abs(first[key].astype("float64") - second[key].astype("float64"))))
                return f"{key} differs (max abs difference {gap:.3g})"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--speed-size", type=int, default=256)
    parser.add_argument("--speed-batch", type=int, default=32)
    parser.add_argument("--speed-steps", type=int, default=20)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--workdir", default="/tmp/gpu_determinism")
    parser.add_argument("--out", default="gpu_determinism.json")
    parser.add_argument("--timeout", type=float, default=300, help="seconds for one child process")
    parser.add_argument("--deadline", type=float, default=480, help="no speed measurement starts after this many seconds")
    parser.add_argument("--role", nargs="*", help=argparse.SUPPRESS)  # a child: train|speed and its arguments
    args = parser.parse_args()
    if args.role:
        role, name, *rest = args.role
        if role == "train":
            train(name, int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
        else:
            speed(name, int(rest[0]), int(rest[1]), int(rest[2]), rest[3])
        return

    import jax

    began = time.perf_counter()
    print(f"JAX {jax.__version__}, devices {jax.devices()}; XLA_FLAGS={DETERMINISTIC}", flush=True)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    models = args.models.split(",")
    jobs = [(m, r) for m in models for r in (1, 2)]
    with ThreadPoolExecutor(len(jobs)) as pool:  # the two runs of every model at once: each its own process
        trained = dict(zip(jobs, pool.map(lambda job: child(
            ["--role", "train", job[0], str(args.image_size), str(args.images), str(args.epochs),
             str(work / f"{job[0]}-{job[1]}.npz")], args.timeout), jobs)))
    results = {}

    def save() -> None:  # after every result: a run cut off at its limit still leaves what it found
        Path(args.out).write_text(json.dumps({"jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
                                              "xla_flags": DETERMINISTIC, "settings": vars(args), "results": results}, indent=1))

    for m in models:
        (c1, e1, s1), (c2, e2, s2) = trained[(m, 1)], trained[(m, 2)]
        if c1 or c2:
            verdict = f"failed: {e1 if c1 else e2}"
        else:
            gap = difference(str(work / f"{m}-1.npz"), str(work / f"{m}-2.npz"))
            verdict = "bit-identical (every weight and the loss of each epoch)" if gap is None else f"differs: {gap}"
        results[m] = {"determinism": verdict, "train_seconds": [round(s1, 1), round(s2, 1)]}
        print(f"{m}: {verdict} ({s1:.0f} s, {s2:.0f} s)", flush=True)
    save()
    for m in models:  # one at a time, so each has the GPU to itself
        if time.perf_counter() - began > args.deadline:
            results[m]["speed"] = f"not measured: past --deadline {args.deadline:.0f} s"
            continue
        out = work / f"{m}-speed.json"
        code, text, _ = child(["--role", "speed", m, str(args.speed_size), str(args.speed_batch), str(args.speed_steps),
                               str(out)], args.timeout)
        if code:
            results[m]["speed"] = f"failed: {text}"
        else:
            rates = json.loads(out.read_text())
            results[m]["speed"] = {**{k: round(v, 1) for k, v in rates.items()},
                                   "speedup": round(rates["mixed_bfloat16"] / rates["float32"], 2)}
        print(f"{m}: images/s at {args.speed_size} px, batch {args.speed_batch}: {results[m]['speed']}", flush=True)
        save()
    save()


if __name__ == "__main__":
    main()
