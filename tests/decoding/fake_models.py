"""Fake next-token functions for the search tests (as keras-hub's sampler
tests do): the logits depend on the whole prefix through a per-row state, so
a wrong reordering of the state changes the result."""

import itertools

import numpy as np
import tensorflow as tf


class PrefixModel:
    """Logits = `table[code(prefix) % rows]`; `code` lives in the state.

    The state holds an integer code of the prefix fed so far; the next-token
    callback folds the last token into it before looking up the logits. The
    same function can be evaluated on a Python prefix (`log_probs`) for
    brute-force checks.
    """

    def __init__(self, vocabulary_size, seed=0, rows=97, scale=2.0):
        rng = np.random.default_rng(seed)
        self.vocabulary_size = vocabulary_size
        self.rows = rows
        self.table = (
            scale * rng.standard_normal((rows, vocabulary_size))
        ).astype("float32")

    def _fold(self, code, token):
        return (code * 31 + token + 1) % self.rows

    def next_fn(self, token_ids, index, state):
        last = tf.gather(token_ids, index, axis=1)
        code = self._fold(state["code"], last)
        logits = tf.gather(tf.constant(self.table), code)
        return logits, {"code": code}

    def initial_state(self, batch_size):
        return {"code": tf.zeros([batch_size], tf.int32)}

    def log_probs(self, prefix):
        """Python log softmax after feeding `prefix` (start token first)."""
        code = 0
        for token in prefix:
            code = self._fold(code, token)
        row = self.table[code].astype("float64")
        return row - np.log(np.sum(np.exp(row - row.max()))) - row.max()


def brute_force_best(model, start, eos_id, max_length, length_penalty):
    """Best (score, tokens) over every hypothesis up to `max_length`."""
    vocab = range(model.vocabulary_size)
    best = (-np.inf, None)
    for length in range(1, max_length + 1):
        for tokens in itertools.product(vocab, repeat=length):
            if eos_id in tokens[:-1]:
                continue
            if length < max_length and tokens[-1] != eos_id:
                continue
            prefix = [start]
            total = 0.0
            for token in tokens:
                total += model.log_probs(prefix)[token]
                prefix.append(token)
            score = total / ((5.0 + length) / 6.0) ** length_penalty
            if score > best[0]:
                best = (score, list(tokens))
    return best
