"""translate: a missing input file is refused naming the setting."""

import pytest

from bertkd_tf.errors import BertkdError
from bertkd_tf.runs import translate


def test_missing_input_file_names_the_setting_and_what_to_do(tmp_path):
    missing = str(tmp_path / "nowhere.de")
    with pytest.raises(BertkdError) as error:
        translate._read_lines(missing)
    assert isinstance(error.value, FileNotFoundError)  # For older callers.
    message = str(error.value)
    assert missing in message and "translate.run.input_file" in message
    assert "standard input" in message


def test_input_lines_are_read_without_newlines(tmp_path):
    path = tmp_path / "in.de"
    path.write_text("ein hund\n\nzwei katzen\n", encoding="utf-8")
    assert translate._read_lines(str(path)) == ["ein hund", "", "zwei katzen"]
