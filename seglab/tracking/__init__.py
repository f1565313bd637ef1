"""Everything MLflow, one room per job:

- `run`:    what one run logs (`Run`; a command's run is begun and ended by its owner, seglab.engine.owner);
- `params`: how a config becomes a run's params (`flatten`, `as_text`; no MLflow);
- `protocol`: the verbs of a run (`RunProtocol`), and the run that logs nothing (`NoOpRun`);
- `experiments`: the experiments runs go in (`experiment_id`: created as model training for MLflow 3's UI);
- `models`: logged models for the tools that use them (`load_model`, `model_run_id`, `model_resize`, `log_export`);
- `sweeps`: how a sweep's runs are tied (the parent run by id, its children read back);
- `store`:  the store itself (`check_reachable`, `TrackingError`, which errors mean "unavailable");
- `registry`: registered models (`register`, `registered_version`, `set_alias`);
- `served`: the served model that takes encoded images (a pyfunc model; `served_entry` is its code);
- `datasets`: a data split as an MLflow dataset, for `Run.log_dataset`;
- `tags`:   every tag key (plain strings).

The names most callers need are importable from here.  They load on first use, so that importing
`seglab.tracking.tags` (the config checks, the sweep callback) does not load MLflow.
"""

import importlib

_HOME = {
    "load_model": "models", "check_model_uri": "models", "model_run_id": "models", "run_experiment_and_name": "models",
    "log_export": "models", "model_resize": "models",
    "NoOpRun": "protocol", "RunProtocol": "protocol",
    "Run": "run", "flatten": "params",
    "TrackingError": "store", "check_reachable": "store", "store_unavailable": "store",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
