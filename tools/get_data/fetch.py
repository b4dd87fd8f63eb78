#!/usr/bin/env python
"""Downloads and prepares a recipe's corpus into DATA_DIR.

  python tools/get_data/fetch.py CORPUS DATA_DIR [--mirror=DIR]
  python tools/get_data/fetch.py --list

CORPUS is a task name (`gin/tasks/<CORPUS>.gin`): iwslt14_de_en (fairseq's
prepare-iwslt14.sh), iwslt15_en_vi, wmt14_en_de (the Stanford NMT
releases), multi30k_de_en, gigaword, cnn_dailymail (TFDS); or
tfds:<TFDS name>. It writes what the task reads: DATA_DIR/<split>.<lang>
files, or the prepared TFDS dataset under DATA_DIR. Run again, it skips
what is complete. --mirror (or $BERTKD_DATA_MIRROR) names a directory
holding the files (as `wget -x URL` lays them out, or by file name; for
TFDS, prepared <name>/<version>/ directories): then the network is not
used. Exits 2 with one paragraph when something cannot be fetched.
"""

import argparse
import os
import sys

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, TOOLS)
sys.path.insert(1, os.path.dirname(TOOLS))

from bertkd_tf.errors import BertkdError  # noqa: E402
from get_data import corpora  # noqa: E402
from get_data.downloads import MIRROR_ENV  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2],
    )
    parser.add_argument("corpus", nargs="?", help="e.g. iwslt14_de_en")
    parser.add_argument("data_dir", nargs="?", help="where to write it")
    parser.add_argument(
        "--mirror",
        default=None,
        help=f"a local mirror directory (default: ${MIRROR_ENV})",
    )
    parser.add_argument(
        "--list", action="store_true", help="print the known corpora"
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(corpora.names()))
        return 0
    if not args.corpus or not args.data_dir:
        parser.error("CORPUS and DATA_DIR are required (or --list)")
    try:
        written = corpora.prepare(args.corpus, args.data_dir, args.mirror)
    except KeyError as error:
        print(f"fetch: {error.args[0]}", file=sys.stderr)
        return 2
    except (BertkdError, OSError) as error:
        print(f"fetch: {error}", file=sys.stderr)
        return 2
    if "tfds" in written:
        print(f"fetch: TFDS {written['tfds']} under {args.data_dir}")
    else:
        for name, lines in sorted(written.items()):
            print(f"fetch: {os.path.join(args.data_dir, name)}: {lines} lines")
    print(f"fetch: {args.corpus} is ready in {args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
