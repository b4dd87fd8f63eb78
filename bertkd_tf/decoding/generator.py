"""Host-side decoding: strings or ids in, batched and bucketed, out.

`Generator` pads sources to a few bucket lengths and batches to powers of
two, keeps one compiled search function per (bucket, batch size,
`SearchSettings`), splits batches into concurrent shards and turns the
results back into strings or id lists. The search graph itself is
`decode_student` (`decoding/decode.py`), shared with the SavedModel export.
"""

import dataclasses
import time

import numpy as np
import tensorflow as tf

# F401: MIN_SHARD_ROWS and check_search_shards are importable from here as
# before (tools, tests).
from bertkd_tf.decoding.decode import (  # noqa: F401
    MIN_SHARD_ROWS,
    auto_search_shards,
    check_search_shards,
    decode_student,
)
from bertkd_tf.decoding.next_token import check_searchable
from bertkd_tf.decoding.search_settings import SearchSettings

# Source lengths (EOS included) a batch is padded to: steps of ~1.5x keep
# the padding (encoder and cross-attention work) under a third, at about
# twice the compilations of powers of two (measured: +3% beam-5 speed on
# 21-token sources, which pad to 24 instead of 32).
DEFAULT_BUCKET_LENGTHS = (
    16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024
)  # fmt: skip

_SETTING_NAMES = tuple(f.name for f in dataclasses.fields(SearchSettings))


def _next_bucket(value, buckets):
    for bucket in buckets:
        if value <= bucket:
            return bucket
    return value


def _power_of_two_at_least(value):
    return 1 << max(0, int(value) - 1).bit_length()


class Generator:
    """Decodes strings or token ids with a student model.

    Sources are padded to a few bucket lengths and batches to a power of two,
    so a stream of batches of mixed shapes compiles a small, bounded number
    of functions: one per (source bucket, padded batch size, decoding
    settings). `compile_count` counts the traces.

    Sources get EOS appended (`encoder_token_ids = source + [EOS]`, as in
    training) and are truncated to `max_source_length - 1` tokens first.
    Each example may generate `min(source_length + max_length_margin,
    max_length)` tokens (EOS included); the decoding buffer of a bucket is
    `min(bucket + max_length_margin, max_length)` long.

    Args:
        model: a `SearchableStudent` (`call_encoder`, `next_token`; see
            `decoding/next_token.py`), e.g. a `TransformerSeq2Seq`.
        vocabulary: a `TaskVocabulary`, needed for string inputs/outputs.
        jit_compile: bool or None, compile the search with XLA (the
            fastest here in float32 and mixed_bfloat16 alike; see
            docs/PERFORMANCE.md). None: `settings.jit_compile` (True by
            default); a bool overrides it.
        bucket_lengths: increasing source lengths (EOS included) to pad to;
            longer sources pad to `max_source_length`.
        max_source_length: int, the longest encoder input (EOS included);
            default the model's (its backbone's) `max_sequence_length`.
        bos_id, eos_id, pad_id: special ids (TaskVocabulary's by default).
        prefix_phases: bool or None (None: `settings.prefix_phases`,
            False by default); with XLA, run beam search in phases of 16,
            32, 64, ... steps that attend over only that prefix of the
            cache. Measured on a trained Multi30k student (1,014 valid
            sentences, buffers of 66-82 slots): 20% faster once compiled
            (68 against 57 sentences/s), but compiling takes ~2x as long
            (42 against 20 s for its 5 compilations: one copy of the step
            per phase), so it pays from a few thousand sentences per
            process on (large test sets, translating big files), not for
            one valid set.
        search_shards: `"auto"` or a power of two: a batch is split into
            this many equal shards whose searches run concurrently (one
            compiled function, called on each shard inside a TensorFlow
            graph that runs them on its inter-op threads). A search step of
            the CPU-sized student is a chain of small ops that leaves the
            second core mostly idle; two shards gave 1.2-1.3x beam-5
            sentences/s at batch 4-64 on 2 cores (docs/PERFORMANCE.md).
            `"auto"`: `auto_search_shards(batch size, beam size)` (1 with a
            GPU/TPU, and for small greedy batches).
            Results are the same as unsharded (each example's search is
            independent).
        settings: the default `SearchSettings` of `generate` (None:
            `SearchSettings()`); `generate` takes others, or changes.

    Example:
    ```python
    generator = Generator(model, vocabulary)
    generator.generate(["ein hund ."], beam_size=5)  # ["a dog ."]
    generator.generate([[17, 18, 9]], beam_size=1)   # [[21, 22, 9]] ids
    generator.generate([[17, 18, 9]], SearchSettings(beam_size=1))
    ```
    """

    def __init__(
        self,
        model,
        vocabulary=None,
        jit_compile=None,
        bucket_lengths=DEFAULT_BUCKET_LENGTHS,
        max_source_length=None,
        bos_id=2,
        eos_id=3,
        pad_id=0,
        prefix_phases=None,
        search_shards="auto",
        settings=None,
    ):
        check_searchable(model)
        if max_source_length is None:
            owner = getattr(model, "backbone", model)
            max_source_length = getattr(owner, "max_sequence_length", None)
        if (
            isinstance(max_source_length, bool)
            or not isinstance(max_source_length, int)
            or max_source_length < 2
        ):
            raise ValueError(
                "`max_source_length` must be an int >= 2 (the longest "
                "encoder input, EOS included; pass it when the model has no "
                f"`max_sequence_length`). Received: {max_source_length!r}"
            )
        bucket_lengths = tuple(bucket_lengths)
        if not bucket_lengths or list(bucket_lengths) != sorted(
            set(bucket_lengths)
        ):
            raise ValueError(
                "`bucket_lengths` must be a non-empty increasing sequence. "
                f"Received: {bucket_lengths!r}"
            )
        if settings is None:
            settings = SearchSettings()
        if not isinstance(settings, SearchSettings):
            raise ValueError(
                "`settings` must be a SearchSettings or None. Received: "
                f"settings={settings!r}"
            )
        if jit_compile is not None:
            settings = settings.replace(jit_compile=jit_compile)
        if prefix_phases is not None:
            settings = settings.replace(prefix_phases=bool(prefix_phases))
        self.model = model
        self.vocabulary = vocabulary
        if vocabulary is not None:
            bos_id, eos_id, pad_id = (
                vocabulary.bos_id,
                vocabulary.eos_id,
                vocabulary.pad_id,
            )
        self.search_shards = check_search_shards(search_shards)
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.settings = settings
        self.max_source_length = max_source_length
        self.bucket_lengths = tuple(
            b for b in bucket_lengths if b < max_source_length
        ) + (max_source_length,)
        self.compile_count = 0
        self._functions = {}

    @property
    def jit_compile(self):
        """Whether the default settings compile the search with XLA."""
        return self.settings.jit_compile

    @property
    def prefix_phases(self):
        return self.settings.prefix_phases

    # --- Inputs ------------------------------------------------------------

    def _source_ids(self, inputs):
        """Inputs -> (list of int lists without EOS, were they strings)."""
        if isinstance(inputs, str):
            raise ValueError(
                "`inputs` must be a batch (a list of strings or of id lists),"
                f" not a single string. Received: {inputs!r}"
            )
        if isinstance(inputs, tf.RaggedTensor):
            return inputs.to_list(), False
        if isinstance(inputs, (tf.Tensor, np.ndarray)):
            array = np.asarray(inputs)
            if array.dtype.kind in "SUO":
                inputs = [
                    x.decode("utf-8") if isinstance(x, bytes) else x
                    for x in array.tolist()
                ]
            else:
                # Dense ids: padding (pad_id) on the right is dropped.
                return [
                    [int(t) for t in row if t != self.pad_id] for row in array
                ], False
        inputs = list(inputs)
        if inputs and all(isinstance(x, (str, bytes)) for x in inputs):
            if self.vocabulary is None:
                raise ValueError(
                    "String inputs need a `vocabulary`; pass one to the "
                    "Generator (or to `generate`)."
                )
            strings = [
                x.decode("utf-8") if isinstance(x, bytes) else x for x in inputs
            ]
            ragged = self.vocabulary.tokenize(tf.constant(strings, tf.string))
            return ragged.to_list(), True
        return [[int(t) for t in row] for row in inputs], False

    def _pad_batch(self, sources, batch_size):
        """Encoder ids/mask `[batch_size, bucket]` (+ EOS), real lengths."""
        limit = self.max_source_length - 1
        sources = [row[:limit] + [self.eos_id] for row in sources]
        longest = max(len(row) for row in sources)
        bucket = _next_bucket(longest, self.bucket_lengths)
        ids = np.full((batch_size, bucket), self.pad_id, np.int32)
        mask = np.zeros((batch_size, bucket), np.int32)
        # Padding rows hold a lone EOS so that attention is never empty.
        ids[:, 0] = self.eos_id
        mask[:, 0] = 1
        for i, row in enumerate(sources):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    # --- Compiled search ---------------------------------------------------

    def shards_for(self, batch_size, beam_size):
        """The number of concurrent searches a padded batch is split into."""
        if self.search_shards == "auto":
            shards = auto_search_shards(batch_size, beam_size)
        else:
            shards = self.search_shards
        return max(1, min(shards, batch_size))

    def _build(self, bucket, batch_size, settings):
        model = self.model
        buffer_length = settings.buffer_length(bucket)

        def search(encoder_token_ids, encoder_padding_mask):
            # Runs once per trace: counts compilations.
            self.compile_count += 1
            return decode_student(
                model,
                encoder_token_ids,
                encoder_padding_mask,
                settings,
                buffer_length=buffer_length,
                bos_id=self.bos_id,
                eos_id=self.eos_id,
                pad_id=self.pad_id,
            )

        compiled = tf.function(search, jit_compile=settings.jit_compile)
        shards = self.shards_for(batch_size, settings.beam_size)
        if shards == 1:
            return compiled
        size = batch_size // shards

        def sharded(encoder_token_ids, encoder_padding_mask):
            # Independent calls of one compiled function (one trace): the
            # graph runs them concurrently on its inter-op threads.
            outputs = [
                compiled(
                    encoder_token_ids[i * size : (i + 1) * size],
                    encoder_padding_mask[i * size : (i + 1) * size],
                )
                for i in range(shards)
            ]
            return tuple(
                tf.concat([output[j] for output in outputs], axis=0)
                for j in range(2)
            )

        return tf.function(sharded)

    def _function(self, bucket, batch_size, settings):
        key = (bucket, batch_size, settings)
        if key not in self._functions:
            self._functions[key] = self._build(bucket, batch_size, settings)
        return self._functions[key]

    # --- Public API --------------------------------------------------------

    def search_settings(self, settings=None, **changes):
        """`settings` (default: the Generator's) with `changes`, checked.

        `changes` are `SearchSettings` fields (`beam_size=5`, ...); a bad
        value raises ValueError naming it.
        """
        unknown = sorted(set(changes) - set(_SETTING_NAMES))
        if unknown:
            raise ValueError(
                f"Unknown decoding setting(s) {unknown}: the settings are "
                f"the SearchSettings fields {list(_SETTING_NAMES)}."
            )
        if settings is None:
            settings = self.settings
        if not isinstance(settings, SearchSettings):
            raise ValueError(
                "`settings` must be a SearchSettings or None. Received: "
                f"settings={settings!r}"
            )
        return settings.replace(**changes) if changes else settings

    def generate(
        self,
        inputs,
        settings=None,
        *,
        return_scores=False,
        output="auto",
        **changes,
    ):
        """Decodes one batch.

        Args:
            inputs: list of strings (needs a vocabulary), or source token
                ids without EOS: list of int lists, a `tf.RaggedTensor`, or
                a dense int array padded with `pad_id`.
            settings: a `SearchSettings`; None: the Generator's.
            return_scores: bool, also return the scores.
            output: "auto" (strings for string inputs, else ids), "strings"
                or "ids". Ids exclude EOS and padding.
            **changes: `SearchSettings` fields that replace those of
                `settings`: `beam_size` (1 runs greedy search),
                `length_penalty`, `max_length` (cap on generated tokens,
                EOS included), `max_length_margin` (per-example cap
                `source_length + max_length_margin`, source with EOS),
                `num_return_sequences` (None for the best, or n <=
                beam_size for the n best: each output is then a list of
                n), `use_cache` (False recomputes the decoder prefix every
                step; for benchmarks), `jit_compile`, `prefix_phases`,
                `min_length` (at least this many tokens before EOS) and
                `no_repeat_ngram_size` (no n-gram twice in an output).

        Returns:
            A list with one entry per input (a list of n entries when
            `num_return_sequences` is set); with `return_scores`, a pair
            `(outputs, scores)`.
        """
        settings = self.search_settings(settings, **changes).canonical()
        if output not in ("auto", "strings", "ids"):
            raise ValueError(
                "`output` must be 'auto', 'strings' or 'ids'. Received: "
                f"{output!r}"
            )
        sources, were_strings = self._source_ids(inputs)
        if not sources:
            return ([], []) if return_scores else []
        as_strings = output == "strings" or (output == "auto" and were_strings)
        if as_strings and self.vocabulary is None:
            raise ValueError("`output='strings'` needs a `vocabulary`.")
        count = len(sources)
        batch_size = _power_of_two_at_least(count)
        ids, mask = self._pad_batch(sources, batch_size)
        function = self._function(ids.shape[1], batch_size, settings)
        sequences, scores = function(tf.constant(ids), tf.constant(mask))
        sequences = sequences.numpy()[:count]
        scores = scores.numpy()[:count]
        n_best = sequences.ndim == 3
        if not n_best:
            sequences = sequences[:, None]
            scores = scores[:, None]
        outputs = [
            [self._finish(row, as_strings) for row in example]
            for example in sequences
        ]
        scores = scores.tolist()
        if not n_best:
            outputs = [example[0] for example in outputs]
            scores = [example[0] for example in scores]
        return (outputs, scores) if return_scores else outputs

    def _finish(self, row, as_strings):
        if as_strings:
            return self.vocabulary.decode(row.tolist())
        tokens = []
        for token in row.tolist():
            if token == self.eos_id:
                break
            if token != self.pad_id:
                tokens.append(token)
        return tokens

    def generate_all(self, inputs, batch_size=32, progress=None, **kwargs):
        """Decodes any number of inputs in length-sorted batches.

        Sorting by source length keeps the padding small; outputs come back
        in input order.

        Args:
            inputs: list of strings or of id lists (see `generate`).
            batch_size: int, examples per batch.
            progress: optional callable `(done, total, seconds)` called after
                every batch.
            **kwargs: passed to `generate`.

        Returns:
            A list of outputs in input order (and scores with
            `return_scores=True`).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive int. Received: {batch_size!r}"
            )
        inputs = list(inputs)
        sources, were_strings = self._source_ids(inputs)
        if were_strings and kwargs.get("output", "auto") == "auto":
            kwargs["output"] = "strings"
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        return_scores = kwargs.pop("return_scores", False)
        outputs = [None] * len(sources)
        scores = [None] * len(sources)
        start = time.perf_counter()
        for begin in range(0, len(order), batch_size):
            chunk = order[begin : begin + batch_size]
            batch_outputs, batch_scores = self.generate(
                [sources[i] for i in chunk], return_scores=True, **kwargs
            )
            for i, out, score in zip(chunk, batch_outputs, batch_scores):
                outputs[i] = out
                scores[i] = score
            if progress is not None:
                progress(
                    begin + len(chunk),
                    len(order),
                    time.perf_counter() - start,
                )
        return (outputs, scores) if return_scores else outputs
