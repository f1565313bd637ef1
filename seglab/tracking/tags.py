"""Every MLflow tag key seglab writes or reads, spelled here and nowhere else (docs/runs.md says what
each holds).  Plain strings, no MLflow import: the config checks and the sweep callback read them
before MLflow loads."""

# MLflow's own keys that seglab sets or reads.
PARENT_RUN = "mlflow.parentRunId"  # a sweep job's run -> the sweep's parent run
GIT_COMMIT = "mlflow.source.git.commit"
# On an experiment: the kind MLflow 3's UI shows it as ("genai_development" opens a Traces overview and lists
# models as "Agent versions"); seglab's experiments are model training, MLflow's "Machine learning" kind.
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_TRAINING = "custom_model_development"

# Who a run is (engine.lifecycle).
VERSION = "seglab.version"
RUN_KEY = "seglab.run_key"  # experiment + overrides: what `trainer.resume=auto` matches
OVERRIDES = "seglab.overrides"  # the command-line overrides as a JSON list (HYDRA_OVERRIDES joins them for people)
SWEEP = "seglab.sweep"  # SWEEP_PARENT on a sweep's parent run, SWEEP_CHILD on its jobs' runs
SWEEP_PARENT, SWEEP_CHILD = "parent", "child"
SWEEP_KEY = "seglab.sweep_key"
SWEEP_ENDED = "seglab.sweep.ended"  # set when a sweep reaches its end: a re-run is then a new sweep
BEST_RUN = "best_run_id"  # on a sweep's parent: its best child
HYDRA_OVERRIDES = "hydra.overrides"
HYDRA_JOB_NUM = "hydra.job.num"
HYDRA_OUTPUT_DIR = "hydra.output_dir"
HYDRA_LAUNCHER = "hydra.launcher"
HYDRA_SWEEPER = "hydra.sweeper"
HYDRA_SWEEP_DIR = "hydra.sweep.dir"

# Who owns a RUNNING run, and whether it is alive (engine.claim.owner_alive).
HOST = "seglab.host"
PID = "seglab.pid"
PID_START = "seglab.pid_start"  # the process's start time, against pid reuse
JOB_ID = "seglab.job_id"  # SLURM or submitit job id
HEARTBEAT = "seglab.heartbeat"  # Unix seconds of the owner's last sign of life
# Who may write to a run (engine.claim): params, not tags (write-once in every store), `seglab.claim.<generation>`.
CLAIM_PREFIX = "seglab.claim."


def claim(generation: int) -> str:
    """The param that records the `generation`-th claim of a run (`<host>:<pid>:<process start>:<time>:<uuid4>`)."""
    return f"{CLAIM_PREFIX}{generation}"


# How a run ended, and what continuing it did.
ERROR = "error"
KILLED_REASON = "seglab.killed_reason"
RESUME_CHANGED = "seglab.resume.changed"  # params a resumed run was re-started with, old -> new
RESUME_PREVIOUS_ERROR = "seglab.resume.previous_error"  # the `error` of the attempt a resumed run finished after
CHECKPOINT = "seglab.checkpoint"  # artifact directory of the newest complete uploaded checkpoint
CHECKPOINT_EPOCH = "seglab.checkpoint_epoch"  # epochs completed in it

# What a training run produced.
PARAMETERS = "model.parameters"
TENSORFLOW_VERSION = "tensorflow.version"
KERAS_VERSION = "keras.version"
DEVICE = "device"  # what training ran on (GPU, CPU)
REPLICAS = "replicas"
XLA = "seglab.xla"  # true when Keras compiled the training step with XLA (trainer.jit_compile is what was asked)
BEST_STEP = "best_step"  # a step, as MLflow counts: epoch - 1 (docs/runs.md, "Counting epochs")
STOPPED_EPOCH = "seglab.stopped_epoch"  # the epoch (from 1, as the console counts) after which early stopping ended training (absent: it did not)
MODEL_STEP = "seglab.model_step"  # the MLflow step (epoch - 1) whose weights the logged model holds
MODEL_WEIGHTS = "seglab.model_weights"  # tracking.log_model: best or last


def best(metric: str) -> str:
    """The tag holding a training run's best value of `metric` (what a sweeper is returned)."""
    return f"best_{metric}"


# An evaluation run (seglab.evaluate).
SPLIT = "seglab.split"
MODEL_URI = "seglab.model_uri"
MODEL_VERSION = "seglab.model_version"
TRAINING_RUN = "seglab.training_run_id"
DATA = "seglab.data"  # the data set it was evaluated on

# A seglab.bench run.
BENCH_OVERRIDES = "overrides"  # the overrides it measured, joined
