"""The debug presets' switches (conf/debug/): train and validate on fewer batches.

`trainer.limit_batches=N`: each epoch reads only the first N batches of each split (`+debug=fast`).
`trainer.overfit_batches=N`: the same N training batches every epoch, validated on themselves
(`+debug=overfit`): a model, loss and labels that fit together drive the loss towards zero.
"""

from __future__ import annotations


def steps_per_epoch(full: int, trainer_cfg) -> int:
    """Training batches an epoch: `full`, or fewer as the trainer config asks."""
    return min(full, trainer_cfg.overfit_batches or trainer_cfg.limit_batches or full)


def limit(train_ds, val_ds, trainer_cfg):
    """(train, validation) batches as the trainer config asks.  `train_ds` holds the batches of all
    epochs one after the other, read `steps_per_epoch` at a time."""
    if trainer_cfg.overfit_batches:
        # cache(): the first pass's batches (already shuffled and augmented) are replayed every epoch
        fixed = train_ds.take(trainer_cfg.overfit_batches).cache()
        return fixed.repeat(), fixed
    if trainer_cfg.limit_batches:
        return train_ds, val_ds.take(trainer_cfg.limit_batches)
    return train_ds, val_ds
