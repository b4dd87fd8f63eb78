"""The `operative_config.gin` that `bertkd` saves with every run's outputs,
and the settings read back from it.

`main.py` writes the file (`OPERATIVE_CONFIG`: gin's operative config, every
binding the run used, macros included) into the run's output directory; tools
that report on finished runs (`tools/blind_outputs.py`,
`tools/choose_distillation.py`) read what a run was trained with from it
rather than from its directory's name.
"""

import ast
import os
import re

OPERATIVE_CONFIG = "operative_config.gin"

_BINDING = re.compile(r"^([A-Za-z_][\w.]*)\s*=\s*(\S.*)$")
DISTILLATION_SETTINGS = ("distillation_weight", "temperature", "top_k")


def distillation_settings(directory):
    """The distillation settings a student was trained with: alpha
    (`distillation_weight`), `temperature` and `top_k`, read from the
    `operative_config.gin` that its `distill` run saved in `directory`.

    A binding `distill.run.x = %MACRO` is followed to the macro's value.
    A setting that the file does not give is None (as for every setting of
    a directory without the file).
    """
    path = os.path.join(directory, OPERATIVE_CONFIG)
    if not os.path.exists(path):
        return dict.fromkeys(DISTILLATION_SETTINGS)
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            match = _BINDING.match(line.rstrip())
            if match:
                values[match.group(1)] = match.group(2).strip()

    def resolve(raw, seen=()):
        if raw is None:
            return None
        if raw.startswith("%"):
            name = raw[1:]
            if name in seen:
                return None
            return resolve(values.get(name), seen + (name,))
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return None

    return {
        key: resolve(values.get(f"distill.run.{key}"))
        for key in DISTILLATION_SETTINGS
    }
