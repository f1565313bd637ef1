"""How a config becomes a run's params: nested keys flattened to dotted names, every value as the
text MLflow keeps.  Light (no MLflow), so a resume compares a run's logged params with a config
before TensorFlow or MLflow load (seglab.engine.lifecycle)."""

from __future__ import annotations

from typing import Any, Mapping


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'depth': 4}} -> {'model.depth': 4}; lists are kept as one value."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def as_text(params: Mapping[str, Any]) -> dict[str, str]:
    """The values as a run's params hold them (MLflow stores text; None as `null`, as the YAML says)."""
    return {k: ("null" if v is None else str(v)) for k, v in params.items()}
