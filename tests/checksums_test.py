"""Final weights files carry a SHA-256, checked when they are loaded."""

import hashlib
import logging
import os

import numpy as np
import pytest

from bertkd_tf import checksums
from bertkd_tf.errors import ArtifactError, MissingArtifactError
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.runs import distill, train_teacher
from tests.models.cmlm_teacher_test import _inputs, _tiny_teacher


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A saved tiny teacher (`teacher_config.json`, `final.weights.h5`)
    and its weights."""
    directory = str(tmp_path_factory.mktemp("teacher"))
    teacher = _tiny_teacher()
    teacher(_inputs())  # Build.
    teacher.mlm_output_dense.bias.assign(np.arange(9) * 0.1)  # Not initial.
    train_teacher.save_teacher(teacher, directory)
    return directory, [w.numpy() for w in teacher.weights]


@pytest.fixture()
def teacher_copy(teacher_dir, tmp_path):
    import shutil

    target = str(tmp_path / "teacher")
    shutil.copytree(teacher_dir[0], target)
    return target


def _weights_path(directory):
    return os.path.join(directory, "final.weights.h5")


def _flip_16_bytes(path):
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def test_sha256_of_file(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 << 20)  # Several read chunks.
    path.write_bytes(data)
    assert checksums.sha256_of_file(str(path)) == (
        hashlib.sha256(data).hexdigest()
    )


def test_saved_teacher_records_its_digest_and_loads(
    teacher_dir, teacher_copy, caplog
):
    path = _weights_path(teacher_copy)
    sidecar = open(path + ".sha256").read()
    assert sidecar == (
        f"{checksums.sha256_of_file(path)}  final.weights.h5\n"
    )  # `sha256sum -c` format.
    with caplog.at_level(logging.WARNING):
        teacher = train_teacher.load_teacher(teacher_copy)
    assert "checksum" not in caplog.text
    for saved, loaded in zip(teacher_dir[1], teacher.weights):
        np.testing.assert_array_equal(saved, loaded.numpy())
    assert not [n for n in os.listdir(teacher_copy) if "tmp" in n]


def test_flipped_bytes_are_an_artifact_error(teacher_copy):
    path = _weights_path(teacher_copy)
    recorded = open(path + ".sha256").read().split()[0]
    _flip_16_bytes(path)
    with pytest.raises(ArtifactError) as error:
        train_teacher.load_teacher(teacher_copy)
    message = str(error.value)
    assert path in message
    assert recorded in message
    assert checksums.sha256_of_file(path) in message
    assert "--mode=train_teacher" in message
    assert "\n" not in message


@pytest.mark.parametrize("with_sidecar", [True, False])
def test_truncated_file_is_an_artifact_error(teacher_copy, with_sidecar):
    path = _weights_path(teacher_copy)
    _truncate(path)
    if not with_sidecar:
        os.remove(path + ".sha256")
    with pytest.raises(ArtifactError, match="final.weights.h5") as error:
        train_teacher.load_teacher(teacher_copy)
    assert "--mode=train_teacher" in str(error.value)


def test_file_without_checksum_loads_with_a_warning(teacher_copy, caplog):
    os.remove(_weights_path(teacher_copy) + ".sha256")
    with caplog.at_level(logging.WARNING):
        teacher = train_teacher.load_teacher(teacher_copy)
    assert "no recorded checksum" in caplog.text
    assert _weights_path(teacher_copy) in caplog.text
    assert teacher(_inputs()).shape[0] == 2


def test_missing_weights_file_is_a_missing_artifact(teacher_copy):
    os.remove(_weights_path(teacher_copy))
    with pytest.raises(MissingArtifactError, match="final.weights.h5"):
        train_teacher.load_teacher(teacher_copy)


def test_damaged_student_weights_are_an_artifact_error(tmp_path):
    student = TransformerSeq2Seq(
        TransformerSeq2SeqBackbone(
            vocabulary_size=20,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
        )
    )
    distill.save_student(student, str(tmp_path))
    loaded = distill.load_student(str(tmp_path))
    for a, b in zip(student.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    _flip_16_bytes(_weights_path(str(tmp_path)))
    with pytest.raises(ArtifactError, match="--mode=distill"):
        distill.load_student(str(tmp_path))
