"""bertkd_tf.operative_config.distillation_settings: what a student was
trained with, read from the operative config its run saved."""

from bertkd_tf.operative_config import OPERATIVE_CONFIG, distillation_settings

# The shape gin gives the file: macros first, then the bindings of each
# configurable, some pointing at macros.
CONFIG = """\
# Macros:
# ==============================================================================
DISTILLATION_WEIGHT = 0.1
TEMPERATURE = %T_ALIAS
T_ALIAS = 5.0
TOP_K = 16

# Parameters for distill.run:
# ==============================================================================
distill.run.distillation_weight = %DISTILLATION_WEIGHT
distill.run.model_dir = 'distilled_a01_seed0'
distill.run.temperature = %TEMPERATURE
distill.run.top_k = 8
"""


def test_macros_followed_and_direct_values_read(tmp_path):
    (tmp_path / OPERATIVE_CONFIG).write_text(CONFIG)
    # top_k is bound directly: the binding wins over the unused macro.
    assert distillation_settings(str(tmp_path)) == {
        "distillation_weight": 0.1,
        "temperature": 5.0,
        "top_k": 8,
    }


def test_missing_file_or_settings_are_none(tmp_path):
    none = {"distillation_weight": None, "temperature": None, "top_k": None}
    assert distillation_settings(str(tmp_path)) == none
    (tmp_path / OPERATIVE_CONFIG).write_text(
        "A = %B\nB = %A\ndistill.run.distillation_weight = %A\n"
        "distill.run.temperature = %NEVER_SET\n"
    )
    assert distillation_settings(str(tmp_path)) == none  # A cycle, unset.
