"""The type and range of every run's settings (its `run()` arguments).

`bertkd` checks each value the gin configuration gives the mode's `run()`
before running it (`main.py`), so `TRAIN_STEPS='abc'` or `TOP_K='eight'`
fails at once with one paragraph naming the setting, the macro it came from
and the bad value, instead of deep inside TensorFlow with a traceback.

The runs share argument names and meanings (`total_steps` is a positive
int in every mode), so the rules are kept by name in `RULES`. An argument
not listed there is checked against the type of its default (bool, int,
float, str); arguments without a plain default (`task`, `teacher_fn`) and
values that are configurable references (`@task.Task()`) are not checked.

Example:
>>> problem("total_steps", "abc")
"must be an int >= 1; got 'abc' (a str)"
>>> problem("total_steps", 5) is None
True
"""

import math


class Rule:
    """What values a setting accepts.

    Args:
        kinds: tuple of `"bool"`, `"int"`, `"number"` (int or float),
            `"str"`, `"strings"` (a list or tuple of str).
        low, high: inclusive bounds of numbers (None: unbounded).
        low_open, high_open: make the bound exclusive.
        choices: the allowed str values (None: any str).
        none: whether None is allowed.
    """

    def __init__(
        self,
        *kinds,
        low=None,
        high=None,
        low_open=False,
        high_open=False,
        choices=None,
        none=False,
    ):
        self.kinds = kinds
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open
        self.choices = tuple(choices) if choices is not None else None
        self.none = none

    def describe(self):
        parts = []
        for kind in self.kinds:
            if kind == "bool":
                parts.append("True or False")
            elif kind == "str":
                if self.choices:
                    parts.append(
                        "one of " + ", ".join(repr(c) for c in self.choices)
                    )
                else:
                    parts.append("a string")
            elif kind == "strings":
                parts.append("a list of strings")
            else:
                noun = "an int" if kind == "int" else "a number"
                parts.append(noun + self._range())
        if self.none:
            parts.append("None")
        return " or ".join(parts)

    def _range(self):
        if self.low is not None and self.high is not None:
            left = "(" if self.low_open else "["
            right = ")" if self.high_open else "]"
            return f" in {left}{self.low}, {self.high}{right}"
        if self.low is not None:
            return f" {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f" {'<' if self.high_open else '<='} {self.high}"
        return ""

    def _in_range(self, value):
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and (
            value < self.low or (self.low_open and value == self.low)
        ):
            return False
        if self.high is not None and (
            value > self.high or (self.high_open and value == self.high)
        ):
            return False
        return True

    def accepts(self, value):
        if value is None:
            return self.none
        for kind in self.kinds:
            if kind == "bool" and isinstance(value, bool):
                return True
            if isinstance(value, bool):
                continue
            if kind == "int" and isinstance(value, int):
                return self._in_range(value)
            if kind == "number" and isinstance(value, (int, float)):
                return self._in_range(value)
            if kind == "str" and isinstance(value, str):
                return self.choices is None or value in self.choices
            if kind == "strings" and isinstance(value, (list, tuple)):
                return all(isinstance(item, str) for item in value)
        return False


def _count(low=1, none=False):
    return Rule("int", low=low, none=none)


def _number(**kwargs):
    return Rule("number", **kwargs)


_PATH = Rule("str")
_OPTIONAL_PATH = Rule("str", none=True)
_FLAG = Rule("bool")
_FRACTION = _number(low=0, high=1, high_open=True)

RULES = {
    # Paths and names.
    "work_dir": _PATH,
    "bert": _PATH,
    "split": _PATH,
    "model_dir": _OPTIONAL_PATH,
    "teacher_dir": _OPTIONAL_PATH,
    "targets_dir": _OPTIONAL_PATH,
    "output_dir": _OPTIONAL_PATH,
    "export_dir": _OPTIONAL_PATH,
    "input_file": _OPTIONAL_PATH,
    "weights_file": _PATH,
    "output_file": _OPTIONAL_PATH,
    "tpu_address": _OPTIONAL_PATH,
    "dtype": _OPTIONAL_PATH,
    "strategy": Rule(
        "str", choices=("default", "mirrored", "multi_worker", "tpu")
    ),
    "distillation_form": Rule("str", choices=("paper", "hinton")),
    "teacher_targets": Rule("str", choices=("offline", "online")),
    "teacher_kind": Rule("str", choices=("cmlm", "seq2seq")),
    "metrics": Rule("strings", none=True),
    # Switches.
    "force": _FLAG,
    "lowercase": Rule("bool", none=True),
    "mixed_precision": _FLAG,
    "jit_compile": _FLAG,
    "prefix_phases": _FLAG,
    "use_cache": _FLAG,
    "fuse_output_layer": _FLAG,
    "verbose": Rule("bool", "int", "str", low=0, high=2, choices=("auto",)),
    # Counts and lengths.
    "min_count": _count(),
    "total_steps": _count(),
    "warmup_steps": _count(low=0),
    "tokens_per_batch": _count(),
    "gradient_accumulation_steps": _count(low=0, none=True),
    "logical_devices": _count(none=True),
    "checkpoint_every_steps": _count(),
    "validate_every_steps": _count(none=True),
    "keep_checkpoints": _count(none=True),
    "interim_checkpoint_minutes": _number(low=0, none=True),
    "max_valid_pairs": _count(none=True),
    "max_sequence_length": _count(low=2),
    "max_predictions": _count(none=True),
    "top_k": _count(),
    "num_passes": _count(),
    "pairs_per_shard": _count(),
    "max_new_shards": _count(low=0, none=True),
    "beam_size": _count(),
    "num_return_sequences": _count(none=True),
    "nbest": _count(none=True),
    "min_length": _count(low=0),
    "no_repeat_ngram_size": _count(low=0),
    "max_length": _count(),
    "max_length_margin": _count(low=0, none=True),
    "max_source_length": _count(none=True),
    "batch_size": _count(),
    "max_pairs": _count(none=True),
    "version": _count(none=True),
    "search_shards": Rule("int", "str", low=1, choices=("auto",)),
    "seed": Rule("int"),
    "valid_mask_seed": Rule("int"),
    # Rates and weights.
    "distillation_weight": _number(low=0, high=1),
    "temperature": _number(low=0, low_open=True),
    "label_smoothing": _FRACTION,
    "mask_probability": _number(low=0, high=1, low_open=True),
    "warmup_fraction": _FRACTION,
    "learning_rate": _number(low=0, low_open=True),
    "peak_learning_rate": _number(low=0, low_open=True),
    "weight_decay": _number(low=0),
    "clipnorm": _number(low=0, low_open=True, none=True),
    "adam_beta_1": _FRACTION,
    "adam_beta_2": _FRACTION,
    "adam_epsilon": _number(low=0, low_open=True),
    "length_penalty": _number(),
    "log_every_seconds": _number(low=0),
}

_DEFAULT_KINDS = ((bool, "bool"), (int, "int"), (float, "number"), (str, "str"))


def rule_for(name, default=None):
    """The `Rule` of argument `name`, else one from its default's type."""
    if name in RULES:
        return RULES[name]
    for python_type, kind in _DEFAULT_KINDS:
        if isinstance(default, python_type):
            return Rule(kind)
    return None


def _type_name(value):
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def problem(name, value, default=None):
    """None if `value` suits argument `name`, else what is wrong with it."""
    rule = rule_for(name, default)
    if rule is None or rule.accepts(value):
        return None
    return f"must be {rule.describe()}; got {value!r} ({_type_name(value)})"
