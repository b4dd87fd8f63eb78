"""Batched, compiled decoding of a `TransformerSeq2Seq` student."""

import os
import time

import numpy as np
import tensorflow as tf

from bertkd_tf.decoding.beam_search import (
    beam_search,
    decode_lengths,
    doubling_prefix_lengths,
)
from bertkd_tf.decoding.greedy_search import greedy_search
from bertkd_tf.models.incremental_decoder import IncrementalDecoder

# Source lengths (EOS included) a batch is padded to: steps of ~1.5x keep
# the padding (encoder and cross-attention work) under a third, at about
# twice the compilations of powers of two (measured: +3% beam-5 speed on
# 21-token sources, which pad to 24 instead of 32).
DEFAULT_BUCKET_LENGTHS = (
    16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024
)  # fmt: skip
# First phase of the prefix-attention search under XLA (see beam_search).
PREFIX_PHASE = 16


def _next_bucket(value, buckets):
    for bucket in buckets:
        if value <= bucket:
            return bucket
    return value


def _power_of_two_at_least(value):
    return 1 << max(0, int(value) - 1).bit_length()


def _power_of_two_at_most(value):
    return 1 << (max(1, int(value)).bit_length() - 1)


# Hypotheses (examples x beam) a shard keeps at least under
# `search_shards="auto"`: measured on 2 cores, two shards of 10 beam-5
# rows (batch 4) are 1.3x one search, two of 4 greedy rows (batch 8) 0.9x.
MIN_SHARD_ROWS = 10


def auto_search_shards(batch_size, beam_size=1, threads=None):
    """Concurrent searches for a batch under `search_shards="auto"`.

    On a CPU-only machine: as many as TensorFlow runs ops concurrently (its
    inter-op threads; by default the cores), a power of two, each with at
    least `MIN_SHARD_ROWS` hypotheses (`batch_size * beam_size / shards`).
    With a GPU or TPU visible: 1 (the accelerator runs one search at a
    time). `threads` overrides TensorFlow's inter-op thread count.
    """
    if any(
        device.device_type != "CPU"
        for device in tf.config.list_physical_devices()
    ):
        return 1
    if threads is None:
        threads = tf.config.threading.get_inter_op_parallelism_threads()
        threads = threads or os.cpu_count() or 1
    rows = batch_size * beam_size
    return _power_of_two_at_most(max(1, min(threads, rows // MIN_SHARD_ROWS)))


def check_search_shards(search_shards):
    """Returns `search_shards` if it is `"auto"` or a power of two >= 1."""
    if search_shards != "auto" and (
        isinstance(search_shards, bool)
        or not isinstance(search_shards, int)
        or search_shards < 1
        or search_shards & (search_shards - 1)
    ):
        raise ValueError(
            "`search_shards` must be 'auto' or a power of two >= 1. "
            f"Received: search_shards={search_shards!r}"
        )
    return search_shards


def decode_student(
    model,
    encoder_token_ids,
    encoder_padding_mask,
    *,
    buffer_length,
    max_length_margin,
    beam_size,
    length_penalty,
    bos_id,
    eos_id,
    pad_id,
    num_return_sequences=None,
    use_cache=True,
    xla=False,
    prefix_phases=False,
):
    """Graph: encoder inputs -> (ids, scores) by greedy or beam search.

    The one search of a `TransformerSeq2Seq`, shared by `Generator` (per
    bucket, XLA) and the SavedModel export (dynamic shapes). The encoder
    runs once; with `use_cache` (default) the decoder steps run through an
    `IncrementalDecoder`: weights cast once, cross-attention keys/values
    computed once per example and shared by its beams, one self-attention
    cache of `buffer_length` slots per layer. `use_cache=False` recomputes
    the decoder prefix at every step with the model's own layers (the
    baseline the cache is measured against).

    `xla=True` arranges the search for XLA's static shapes (faster there,
    slower in TensorFlow's graph mode): beam search tracks which beam each
    cache slot came from instead of gathering the caches every step (see
    `IncrementalDecoder`). Greedy search is the same in both. With
    `xla` and `prefix_phases`, beam search runs in phases of 16, 32, 64,
    ... steps that attend over only that prefix of the cache (see
    `beam_search`): faster steps, but one compiled copy of the step per
    phase.
    """
    batch_size = tf.shape(encoder_token_ids)[0]
    encoder_hidden = model.call_encoder(encoder_token_ids, encoder_padding_mask)
    max_lengths = decode_lengths(
        tf.reduce_sum(encoder_padding_mask, axis=1),
        buffer_length,
        max_length_margin,
    )

    if use_cache:
        decoder = IncrementalDecoder(model)
        context = decoder.prepare(encoder_hidden, encoder_padding_mask)
        positions = decoder.position_table(buffer_length)

        def next_fn(token_ids, index, state, prefix_length=None):
            last = tf.gather(token_ids, index, axis=1)
            return decoder.step(
                context,
                last,
                index,
                state,
                group_size=beam_size,
                positions=positions,
                prefix_length=prefix_length,
            )

        track_origins = beam_size > 1 and xla
        initial_state = decoder.initial_state(
            batch_size, buffer_length, track_origins=track_origins
        )
        reorder_state = decoder.reorder_state
        # Phases pay where the attention reads gathered slots (beam search
        # under XLA); greedy search's sliced cache costs a copy (measured).
        prefix_lengths = (
            doubling_prefix_lengths(buffer_length, PREFIX_PHASE)
            if track_origins and prefix_phases
            else None
        )
    else:
        reorder_state = None
        prefix_lengths = None
        source_length = tf.shape(encoder_token_ids)[1]
        # Cross-attention keys/values, once: one decoder step on BOS at
        # batch size (its self-attention cache is thrown away).
        self_cache, cross_cache = model.initialize_cache(
            batch_size, buffer_length, source_length
        )
        start = tf.fill([batch_size, 1], bos_id)
        _, _, _, cross_cache = model.call_decoder_with_cache(
            encoder_hidden,
            encoder_padding_mask,
            start,
            self_attention_cache=self_cache,
            self_attention_cache_update_index=0,
            cross_attention_cache=cross_cache,
            cross_attention_cache_update_index=0,
        )
        encoder_hidden = tf.repeat(encoder_hidden, beam_size, axis=0)
        encoder_mask = tf.repeat(encoder_padding_mask, beam_size, axis=0)
        cross_cache = tf.repeat(cross_cache, beam_size, axis=0)

        def next_fn(token_ids, index, state):
            fresh, _ = model.initialize_cache(
                tf.shape(token_ids)[0], buffer_length, source_length
            )
            logits, _, _, _ = model.call_decoder_with_cache(
                encoder_hidden,
                encoder_mask,
                token_ids[:, :buffer_length],
                self_attention_cache=fresh,
                self_attention_cache_update_index=0,
                cross_attention_cache=cross_cache,
                cross_attention_cache_update_index=None,
            )
            return tf.gather(logits, index, axis=1), state

        initial_state = ()

    initial_ids = tf.fill([batch_size], bos_id)
    if beam_size == 1:
        return greedy_search(
            next_fn,
            initial_ids,
            initial_state,
            max_length=buffer_length,
            eos_id=eos_id,
            max_lengths=max_lengths,
            pad_id=pad_id,
            prefix_lengths=prefix_lengths,
        )
    return beam_search(
        next_fn,
        initial_ids,
        initial_state,
        beam_size=beam_size,
        max_length=buffer_length,
        eos_id=eos_id,
        length_penalty=length_penalty,
        max_lengths=max_lengths,
        num_return_sequences=num_return_sequences,
        pad_id=pad_id,
        reorder_state=reorder_state,
        prefix_lengths=prefix_lengths,
    )


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
        model: a `TransformerSeq2Seq` (`call_encoder`,
            `call_decoder_with_cache`, `initialize_cache`).
        vocabulary: a `TaskVocabulary`, needed for string inputs/outputs.
        jit_compile: bool, compile the search with XLA (the fastest here
            in float32 and mixed_bfloat16 alike; see docs/PERFORMANCE.md).
        bucket_lengths: increasing source lengths (EOS included) to pad to;
            longer sources pad to `max_source_length`.
        max_source_length: int, the longest encoder input (EOS included);
            default the backbone's `max_sequence_length`.
        bos_id, eos_id, pad_id: special ids (TaskVocabulary's by default).
        prefix_phases: bool; with XLA, run beam search in phases of 16, 32,
            64, ... steps that attend over only that prefix of the cache.
            Measured on a trained Multi30k student (1,014 valid sentences,
            buffers of 66-82 slots): 20% faster once compiled (68 against
            57 sentences/s), but compiling takes ~2x as long (42 against
            20 s for its 5 compilations: one copy of the step per phase),
            so it pays from a few thousand sentences per process on (large
            test sets, translating big files), not for one valid set.
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

    Example:
    ```python
    generator = Generator(model, vocabulary)
    generator.generate(["ein hund ."], beam_size=5)  # ["a dog ."]
    generator.generate([[17, 18, 9]], beam_size=1)   # [[21, 22, 9]] ids
    ```
    """

    def __init__(
        self,
        model,
        vocabulary=None,
        jit_compile=True,
        bucket_lengths=DEFAULT_BUCKET_LENGTHS,
        max_source_length=None,
        bos_id=2,
        eos_id=3,
        pad_id=0,
        prefix_phases=False,
        search_shards="auto",
    ):
        for method in (
            "call_encoder",
            "call_decoder_with_cache",
            "initialize_cache",
        ):
            if not hasattr(model, method):
                raise ValueError(
                    f"`model` must have a `{method}` method (a "
                    f"TransformerSeq2Seq). Received: {model!r}"
                )
        if max_source_length is None:
            max_source_length = model.backbone.max_sequence_length
        if not isinstance(max_source_length, int) or max_source_length < 2:
            raise ValueError(
                "`max_source_length` must be an int >= 2. Received: "
                f"{max_source_length!r}"
            )
        bucket_lengths = tuple(bucket_lengths)
        if not bucket_lengths or list(bucket_lengths) != sorted(
            set(bucket_lengths)
        ):
            raise ValueError(
                "`bucket_lengths` must be a non-empty increasing sequence. "
                f"Received: {bucket_lengths!r}"
            )
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
        self.jit_compile = jit_compile
        self.prefix_phases = bool(prefix_phases)
        self.max_source_length = max_source_length
        self.bucket_lengths = tuple(
            b for b in bucket_lengths if b < max_source_length
        ) + (max_source_length,)
        self.compile_count = 0
        self._functions = {}

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
        (
            beam_size,
            length_penalty,
            max_length,
            max_length_margin,
            num_return_sequences,
            use_cache,
        ) = settings
        model = self.model
        if max_length_margin is None:
            buffer_length = max_length
        else:
            buffer_length = min(bucket + max_length_margin, max_length)

        def search(encoder_token_ids, encoder_padding_mask):
            # Runs once per trace: counts compilations.
            self.compile_count += 1
            return decode_student(
                model,
                encoder_token_ids,
                encoder_padding_mask,
                buffer_length=buffer_length,
                max_length_margin=max_length_margin,
                beam_size=beam_size,
                length_penalty=length_penalty,
                bos_id=self.bos_id,
                eos_id=self.eos_id,
                pad_id=self.pad_id,
                num_return_sequences=num_return_sequences,
                use_cache=use_cache,
                xla=self.jit_compile,
                prefix_phases=self.prefix_phases,
            )

        compiled = tf.function(search, jit_compile=self.jit_compile)
        shards = self.shards_for(batch_size, beam_size)
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
        key = (bucket, batch_size) + settings
        if key not in self._functions:
            self._functions[key] = self._build(bucket, batch_size, settings)
        return self._functions[key]

    # --- Public API --------------------------------------------------------

    def generate(
        self,
        inputs,
        beam_size=4,
        length_penalty=0.6,
        max_length=100,
        max_length_margin=50,
        num_return_sequences=None,
        use_cache=True,
        return_scores=False,
        output="auto",
    ):
        """Decodes one batch.

        Args:
            inputs: list of strings (needs a vocabulary), or source token
                ids without EOS: list of int lists, a `tf.RaggedTensor`, or
                a dense int array padded with `pad_id`.
            beam_size: int; 1 runs greedy search (length penalty unused).
            length_penalty: float, GNMT exponent.
            max_length: int, absolute cap on generated tokens (EOS
                included).
            max_length_margin: int or None, per-example cap
                `source_length + max_length_margin` (source with EOS).
            num_return_sequences: None for the best, or n <= beam_size for
                the n best (then each output is a list of n).
            use_cache: bool, use the self-attention cache (False recomputes
                the decoder prefix every step; for benchmarks).
            return_scores: bool, also return the scores.
            output: "auto" (strings for string inputs, else ids), "strings"
                or "ids". Ids exclude EOS and padding.

        Returns:
            A list with one entry per input (a list of n entries when
            `num_return_sequences` is set); with `return_scores`, a pair
            `(outputs, scores)`.
        """
        if not isinstance(beam_size, int) or beam_size < 1:
            raise ValueError(
                f"`beam_size` must be a positive int. Received: {beam_size!r}"
            )
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(
                f"`max_length` must be a positive int. Received: {max_length!r}"
            )
        if output not in ("auto", "strings", "ids"):
            raise ValueError(
                "`output` must be 'auto', 'strings' or 'ids'. Received: "
                f"{output!r}"
            )
        if beam_size == 1 and num_return_sequences not in (None, 1):
            raise ValueError(
                "`num_return_sequences` needs beam_size >= it. Received: "
                f"beam_size=1, num_return_sequences={num_return_sequences!r}"
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
        settings = (
            beam_size,
            float(length_penalty) if beam_size > 1 else 0.0,
            max_length,
            max_length_margin,
            num_return_sequences if beam_size > 1 else None,
            bool(use_cache),
        )
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
