"""Everything MLflow, one room per job:

- `run`:    what one run logs (`Run`, a context manager that always ends the run) and `flatten`;
- `experiments`: the experiments runs go in (`experiment_id`; `Run` opens its run in one);
- `models`: logged models for the tools that use them (`load_model`, `model_run_id`);
- `sweeps`: how a sweep's runs are tied (the parent run by id, its children read back);
- `store`:  the store itself (`check_reachable`, `TrackingError`, which errors mean "unavailable");
- `registry`: registered models (`register`, `registered_version`, `set_alias`);
- `served`: the served model that takes encoded images (a pyfunc model; `served_entry` is its code);
- `datasets`: a data split as an MLflow dataset, for `Run.log_dataset`.

The names most callers need are importable from here.
"""

from seglab.tracking.experiments import Run
from seglab.tracking.models import load_model, model_run_id, run_experiment_and_name
from seglab.tracking.run import flatten
from seglab.tracking.store import TrackingError, check_reachable, store_unavailable

__all__ = ["Run", "TrackingError", "check_reachable", "flatten", "load_model", "model_run_id", "run_experiment_and_name",
           "store_unavailable"]
