"""Token-budget batching: length buckets, few shapes, seeded shuffling."""

import numpy as np
import tensorflow as tf

_STEPS = (8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256, 320)


def default_bucket_boundaries(max_length, step=None):
    """Pad-to lengths up to `max_length`.

    `step=None`: the default ladder (8, 12, 16, 24, ... then every 128
    from 384), few shapes, up to a third of a bucket's width as padding;
    the last boundary is `max_length` rounded up to a multiple of 8.
    `step=n`: every `n` tokens (`n, 2n, ...`), the last one `max_length`
    rounded up to a multiple of `n`: more shapes, less padding (the C-MLM
    teacher's packed pairs, `train_teacher.run.bucket_step`).
    """
    if step is not None:
        step = int(step)
        if step < 1:
            raise ValueError(
                f"A bucket step must be a positive number of tokens; got "
                f"step={step}."
            )
        top = -(-int(max_length) // step) * step
        return list(range(step, top + 1, step))
    top = -(-int(max_length) // 8) * 8
    boundaries = [b for b in _STEPS if b < top]
    b = 384
    while b < top:
        boundaries.append(b)
        b += 128
    return boundaries + [top]


class TokenBudgetBatcher:
    """Batches variable-length examples by a token budget.

    An example goes to the smallest bucket whose boundary is at least its
    length; a bucket's batches are padded to the boundary, so compiled
    functions see one shape per bucket. A bucket of boundary `b` holds
    `tokens_per_batch // b` examples, rounded down to a multiple of
    `num_replicas` (at least `num_replicas`), so the budget is the global
    one and every replica gets an equal share.

    Args:
        tokens_per_batch: the global token budget of a batch (padded
            positions included).
        bucket_boundaries: ascending pad-to lengths; the last must cover the
            longest example.
        num_replicas: replicas the batch is split over.
        shuffle_buffer: examples in the shuffle buffer (0: keep order).
        seed: shuffling seed; the order is a function of it.
        drop_remainder: drop incomplete batches (training: every batch of a
            bucket has the same shape).
        max_batch_size: optional cap on examples per batch.

    Example:
    >>> batcher = TokenBudgetBatcher(4096, [16, 32, 64], shuffle_buffer=1000)
    >>> batches = batcher(dataset, lambda e: tf.shape(e["labels"])[0])
    """

    def __init__(
        self,
        tokens_per_batch,
        bucket_boundaries,
        num_replicas=1,
        shuffle_buffer=0,
        seed=0,
        drop_remainder=True,
        max_batch_size=None,
    ):
        boundaries = [int(b) for b in bucket_boundaries]
        if not boundaries or boundaries != sorted(set(boundaries)):
            raise ValueError(
                "bucket_boundaries must be ascending and distinct; got "
                f"{bucket_boundaries!r}."
            )
        if tokens_per_batch < boundaries[-1]:
            raise ValueError(
                f"tokens_per_batch={tokens_per_batch} cannot hold one example "
                f"of the longest bucket ({boundaries[-1]} tokens)."
            )
        self.tokens_per_batch = int(tokens_per_batch)
        self.bucket_boundaries = boundaries
        self.num_replicas = int(num_replicas)
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.drop_remainder = drop_remainder
        self.max_batch_size = max_batch_size

    def batch_sizes(self):
        """Examples per batch for each bucket."""
        sizes = []
        for boundary in self.bucket_boundaries:
            size = self.tokens_per_batch // boundary
            if self.max_batch_size:
                size = min(size, self.max_batch_size)
            size = max(
                self.num_replicas,
                size // self.num_replicas * self.num_replicas,
            )
            sizes.append(size)
        return sizes

    def __call__(self, dataset, length_fn, seed_offset=0, repeat=False):
        """Shuffles (optionally repeats) and batches `dataset`.

        Args:
            dataset: unbatched examples: dicts/tuples of tensors whose
                unknown dimensions are sequence lengths.
            length_fn: example -> its length (scalar int).
            seed_offset: added to the seed (a new order per epoch/resume).
            repeat: repeat forever (training).
        """
        seed = self.seed + int(seed_offset)
        boundaries = tf.constant(self.bucket_boundaries, tf.int64)
        sizes = tf.constant(self.batch_sizes(), tf.int64)
        longest = self.bucket_boundaries[-1]
        if self.shuffle_buffer:
            dataset = dataset.shuffle(
                self.shuffle_buffer, seed=seed, reshuffle_each_iteration=True
            )
        if repeat:
            dataset = dataset.repeat()

        def key_fn(example):
            length = tf.cast(length_fn(example), tf.int64)
            tf.debugging.assert_less_equal(
                length,
                tf.constant(longest, tf.int64),
                message=(
                    f"An example is longer than the last bucket boundary "
                    f"({longest}); filter by length or raise the boundary."
                ),
            )
            return tf.reduce_sum(tf.cast(length > boundaries, tf.int64))

        def padded_shapes(boundary):
            def shape(spec):
                dims = [boundary if d is None else d for d in spec.shape]
                return (
                    tf.stack([tf.cast(d, tf.int64) for d in dims])
                    if dims
                    else []
                )

            return tf.nest.map_structure(shape, dataset.element_spec)

        def reduce_fn(key, window):
            return window.padded_batch(
                sizes[key],
                padded_shapes=padded_shapes(boundaries[key]),
                drop_remainder=self.drop_remainder,
            )

        dataset = dataset.group_by_window(
            key_func=key_fn,
            reduce_func=reduce_fn,
            window_size_func=lambda key: sizes[key],
        )
        if self.shuffle_buffer:
            dataset = dataset.shuffle(
                max(8, self.shuffle_buffer // int(np.max(self.batch_sizes()))),
                seed=seed + 1,
            )
        return dataset.prefetch(tf.data.AUTOTUNE)
