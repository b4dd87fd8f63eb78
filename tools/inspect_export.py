r"""Prints the signatures of an exported student and translates with it.

Imports only tensorflow and tensorflow_text (which registers the TF Text ops
the tokenizer uses), never bertkd_tf: it checks that the export stands on
its own, as TF Serving sees it.

Usage:
  python tools/inspect_export.py WORK_DIR/export            # latest version
  python tools/inspect_export.py WORK_DIR/export/1700000000 \
      --sentence "ein hund läuft ." --sentence "zwei kinder spielen ."
  echo "ein hund läuft ." | python tools/inspect_export.py DIR --stdin
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402, F401  (registers the TF Text ops)

DEFAULT_SENTENCES = (
    "ein hund läuft über die wiese .",
    "zwei kinder spielen mit einem ball .",
    "",
)


def resolve_version_dir(path):
    """`path` itself if it holds a SavedModel, else its highest version."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    if not tf.io.gfile.isdir(path):
        raise SystemExit(f"inspect_export: no such directory {path!r}.")
    versions = sorted(
        int(name.rstrip("/"))
        for name in tf.io.gfile.listdir(path)
        if name.rstrip("/").isdigit()
    )
    if not versions:
        raise SystemExit(
            f"inspect_export: {path!r} holds neither saved_model.pb nor "
            "integer version directories."
        )
    return os.path.join(path, str(versions[-1]))


def describe(spec):
    shape = "[" + ", ".join("?" if d is None else str(d) for d in spec.shape)
    return f"{spec.dtype.name} {shape}]"


def print_signatures(loaded):
    for name, function in sorted(loaded.signatures.items()):
        _, inputs = function.structured_input_signature
        print(f"signature {name!r}:")
        for key, spec in sorted(inputs.items()):
            print(f"  input  {key}: {describe(spec)}")
        for key, spec in sorted(function.structured_outputs.items()):
            print(f"  output {key}: {describe(spec)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", help="a version directory or export_dir")
    parser.add_argument(
        "--sentence",
        action="append",
        default=None,
        help="a sentence to translate (repeatable)",
    )
    parser.add_argument(
        "--stdin", action="store_true", help="read sentences from stdin"
    )
    args = parser.parse_args(argv)
    version_dir = resolve_version_dir(args.path)
    print(f"SavedModel: {version_dir}")
    settings = os.path.join(version_dir, "assets.extra", "bertkd_export.json")
    if tf.io.gfile.exists(settings):
        with tf.io.gfile.GFile(settings) as f:
            print("export settings:", json.dumps(json.load(f), sort_keys=True))
    loaded = tf.saved_model.load(version_dir)
    print_signatures(loaded)
    if args.stdin:
        sentences = [line.rstrip("\n") for line in sys.stdin]
    else:
        sentences = args.sentence or list(DEFAULT_SENTENCES)
    result = loaded.signatures["serving_default"](
        inputs=tf.constant(sentences, tf.string)
    )
    outputs = [x.decode("utf-8") for x in result["outputs"].numpy().tolist()]
    for sentence, output, score in zip(
        sentences, outputs, result["scores"].numpy().tolist()
    ):
        print(f"> {sentence}\n< {output}\t(score {score:.4f})")
    return outputs


if __name__ == "__main__":
    main()
