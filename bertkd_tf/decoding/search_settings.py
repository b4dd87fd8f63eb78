"""`SearchSettings`: how a student's output is searched, in one value."""

import dataclasses
import math

# Where each setting is explained in one line (error messages).
_MEANING = {
    "beam_size": "hypotheses kept per example; 1 is greedy search",
    "length_penalty": "the GNMT length-penalty exponent (docs/METHOD.md)",
    "max_length": "the most tokens generated, EOS included",
    "max_length_margin": (
        "the per-example cap source length + margin, or None for none"
    ),
    "jit_compile": "compile the search with XLA",
    "prefix_phases": (
        "with XLA, run beam search in phases over a growing cache prefix"
    ),
    "num_return_sequences": "None for the best hypothesis, or the n best",
    "use_cache": (
        "decode with the student's cache (False recomputes the prefix)"
    ),
    "min_length": (
        "the fewest tokens generated before EOS (EOS is blocked at the "
        "first min_length steps; fairseq's --min-len)"
    ),
    "no_repeat_ngram_size": (
        "0, or n: no n-gram occurs twice in a hypothesis (fairseq's "
        "--no-repeat-ngram-size)"
    ),
}


def _bad(name, requirement, value):
    return ValueError(
        f"`{name}` must be {requirement}. Received: {name}={value!r} "
        f"(SearchSettings.{name}: {_MEANING[name]}; set it in gin as "
        f"SearchSettings.{name}, or through the macro the gin/runs/*.gin "
        "files bind it to)."
    )


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The decoding settings of a search, checked once, hashable.

    One value travels from the gin file (`gin/runs/evaluate.gin`,
    `translate.gin`, `export.gin` bind `SearchSettings` once) through the
    runs into `Generator` (whose compiled functions it keys) and
    `ServingModule`, down to `decode_student`.

    Attributes:
        beam_size: int >= 1; 1 runs greedy search.
        length_penalty: float, the GNMT exponent (docs/METHOD.md; unused
            by greedy search).
        max_length: int >= 1, the most tokens generated (EOS included).
        max_length_margin: int >= 0 or None: an example generates at most
            `source_length + max_length_margin` tokens (source with EOS).
        jit_compile: bool, compile the search with XLA (and lay it out for
            XLA's static shapes, see `decode_student`).
        prefix_phases: bool; with XLA, beam search runs in phases of 16,
            32, 64, ... steps attending over only that prefix of the cache
            (faster steps, one compiled copy of the step per phase).
        num_return_sequences: None for the best hypothesis, or an int in
            `[1, beam_size]` for the n best.
        use_cache: bool; False recomputes the decoder prefix at every step
            (the baseline the cache is measured against).
        min_length: int in `[0, max_length - 1]`: EOS may not be generated
            at the first `min_length` steps, so a finished hypothesis has
            at least `min_length` tokens before its EOS (fairseq's
            `--min-len`; 0: off). A per-example cap below it
            (`max_length_margin`) still ends the hypothesis (truncated).
        no_repeat_ngram_size: int >= 0: with n > 0, a token that would
            complete an n-gram already in the hypothesis (start token
            included, as fairseq and Hugging Face count) is blocked
            (fairseq's `--no-repeat-ngram-size`; 0: off).
            Blocked tokens get log probability -inf; the others keep the
            model's (no renormalisation, as fairseq), so scores stay the
            model's log probabilities of the chosen tokens.

    Raises:
        ValueError: a setting of the wrong type or out of range, naming it.

    Example:
    ```python
    settings = SearchSettings(beam_size=5, max_length=64)
    greedy = dataclasses.replace(settings, beam_size=1)
    ```
    """

    beam_size: int = 4
    length_penalty: float = 0.6
    max_length: int = 100
    max_length_margin: int | None = 50
    jit_compile: bool = True
    prefix_phases: bool = False
    num_return_sequences: int | None = None
    use_cache: bool = True
    min_length: int = 0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        if not _is_int(self.beam_size):
            raise _bad("beam_size", "an int", self.beam_size)
        if self.beam_size < 1:
            raise _bad("beam_size", ">= 1", self.beam_size)
        if (
            isinstance(self.length_penalty, bool)
            or not isinstance(self.length_penalty, (int, float))
            or not math.isfinite(self.length_penalty)
        ):
            raise _bad("length_penalty", "a float", self.length_penalty)
        if not _is_int(self.max_length):
            raise _bad("max_length", "an int", self.max_length)
        if self.max_length < 1:
            raise _bad("max_length", ">= 1", self.max_length)
        margin = self.max_length_margin
        if margin is not None and (not _is_int(margin) or margin < 0):
            raise _bad("max_length_margin", "None or an int >= 0", margin)
        for name in ("jit_compile", "prefix_phases", "use_cache"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, "True or False", getattr(self, name))
        n = self.num_return_sequences
        if n is not None and (not _is_int(n) or not 1 <= n <= self.beam_size):
            raise _bad(
                "num_return_sequences",
                f"None or an int in [1, beam_size={self.beam_size}]",
                n,
            )
        if not _is_int(self.min_length) or not (
            0 <= self.min_length < self.max_length
        ):
            raise _bad(
                "min_length",
                f"an int in [0, max_length - 1 = {self.max_length - 1}] "
                "(EOS must stay reachable)",
                self.min_length,
            )
        n = self.no_repeat_ngram_size
        if not _is_int(n) or n < 0:
            raise _bad("no_repeat_ngram_size", "an int >= 0 (0: off)", n)
        object.__setattr__(self, "length_penalty", float(self.length_penalty))

    def replace(self, **changes):
        """A copy with `changes` (checked again)."""
        return dataclasses.replace(self, **changes)

    def canonical(self):
        """The settings with what the search ignores set to its default:
        greedy search (beam 1) reads no length penalty and returns one
        sequence. Equal searches have equal canonical settings (a cache
        key)."""
        if self.beam_size > 1:
            return self
        return self.replace(length_penalty=0.0, num_return_sequences=None)

    def buffer_length(self, source_length):
        """The decoding buffer for sources padded to `source_length`
        (EOS included): `min(source_length + max_length_margin,
        max_length)`, or `max_length` without a margin."""
        if self.max_length_margin is None:
            return self.max_length
        return min(source_length + self.max_length_margin, self.max_length)
