"""Keras 3.15 fixes shared by the project's trainable models."""

import tensorflow as tf
from keras import ops


class MultiWorkerFitMixin:
    """Makes `fit` work under `MultiWorkerMirroredStrategy` (Keras 3.15).

    Mix in before `keras.Model` (`class M(MultiWorkerFitMixin, keras.Model)`).
    Two Keras bugs are worked around; other strategies are unaffected:

    - the per-replica logs of a step are reduced with
      `strategy.reduce("MEAN", v, axis=0)`, which fails on scalars: logs
      become shape `[1]`, whose mean over all replicas is the scalar mean;
    - the first distributed batch is reduced for a symbolic build, which
      fails for dict batches (keras-team/keras#20329): a model whose layers
      are all built skips it (its optimizer is built here instead). Build
      the model (call it once) inside the strategy scope before `fit`.
    """

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        if isinstance(
            self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            logs = {k: ops.reshape(v, [1]) for k, v in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self.built and all(layer.built for layer in self._flatten_layers()):
            if self.optimizer is not None and not self.optimizer.built:
                with self.distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
