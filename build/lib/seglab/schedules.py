"""Learning-rate schedules (the `scheduler` config group), evaluated at every optimizer step.

Each is a Keras `LearningRateSchedule` of the optimizer's step counter, so it is deterministic, is
restored with the optimizer's variables, and needs no callback.  All share an optional linear
warm-up: over the first `warmup_epochs` the rate rises linearly from `base / warmup_steps` to the
base rate (Goyal et al. 2017, "Accurate, Large Minibatch SGD", section 2.2); after it the schedule's
own decay runs over the remaining steps, with `progress` going from 0 to 1.

- `Constant`: the base rate.
- `Cosine`:   min + (base - min) * (1 + cos(pi * progress)) / 2 (Loshchilov & Hutter 2017, SGDR, eq. 5, one cycle).
- `Poly`:     (base - min) * (1 - progress)^power + min (Chen et al. 2017, DeepLab, section 4.1;
              MMSegmentation's default: power 0.9, min 1e-4, by iteration).
- `Step`:     base * gamma^floor(epoch / step_epochs) (torch's StepLR).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Warm-up, then `decay(progress, epoch)`.  `base_learning_rate` comes from the optimizer config,
    `steps_per_epoch` and `epochs` from the data and trainer configs (seglab.train passes them)."""

    def __init__(self, base_learning_rate: float, steps_per_epoch: float, epochs: int, warmup_epochs: float):
        self.base_learning_rate = float(base_learning_rate)
        # Optimizer updates per epoch: the schedule is evaluated at the optimizer's `iterations`, which with
        # trainer.gradient_accumulation_steps=k counts one update per k batches, so a fraction then.
        self.steps_per_epoch, self.epochs, self.warmup_epochs = float(steps_per_epoch), int(epochs), float(warmup_epochs)
        self.warmup_steps = int(round(self.warmup_epochs * self.steps_per_epoch))
        self.total_steps = self.steps_per_epoch * self.epochs

    def decay(self, progress, epoch):
        """The rate after warm-up at `progress` in [0, 1] of the decay steps and 0-based `epoch`:
        the base rate here; the schedules below decay it."""
        return tf.fill(tf.shape(progress), self.base_learning_rate)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        progress = tf.clip_by_value((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        rate = tf.cast(self.decay(progress, tf.floor(step / self.steps_per_epoch)), tf.float32)
        if self.warmup_steps:
            rate = tf.where(step < self.warmup_steps, self.base_learning_rate * (step + 1) / self.warmup_steps, rate)
        return rate

    def get_config(self):
        return {"base_learning_rate": self.base_learning_rate, "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs, "warmup_epochs": self.warmup_epochs}


class Constant(Schedule):
    """The base rate after the warm-up."""


class Cosine(Schedule):
    def __init__(self, base_learning_rate, steps_per_epoch, epochs, warmup_epochs, min_learning_rate: float):
        super().__init__(base_learning_rate, steps_per_epoch, epochs, warmup_epochs)
        self.min_learning_rate = float(min_learning_rate)

    def decay(self, progress, epoch):
        return self.min_learning_rate + (self.base_learning_rate - self.min_learning_rate) * 0.5 * (1.0 + tf.cos(math.pi * progress))

    def get_config(self):
        return {**super().get_config(), "min_learning_rate": self.min_learning_rate}


class Poly(Schedule):
    def __init__(self, base_learning_rate, steps_per_epoch, epochs, warmup_epochs, power: float, min_learning_rate: float):
        super().__init__(base_learning_rate, steps_per_epoch, epochs, warmup_epochs)
        self.power, self.min_learning_rate = float(power), float(min_learning_rate)

    def decay(self, progress, epoch):
        return (self.base_learning_rate - self.min_learning_rate) * tf.pow(1.0 - progress, self.power) + self.min_learning_rate

    def get_config(self):
        return {**super().get_config(), "power": self.power, "min_learning_rate": self.min_learning_rate}


class Step(Schedule):
    def __init__(self, base_learning_rate, steps_per_epoch, epochs, warmup_epochs, step_epochs: int, gamma: float):
        super().__init__(base_learning_rate, steps_per_epoch, epochs, warmup_epochs)
        self.step_epochs, self.gamma = int(step_epochs), float(gamma)

    def decay(self, progress, epoch):
        return self.base_learning_rate * tf.pow(self.gamma, tf.floor(epoch / self.step_epochs))

    def get_config(self):
        return {**super().get_config(), "step_epochs": self.step_epochs, "gamma": self.gamma}
