"""Teacher-target reading: peak memory and positions/s, streamed vs in memory.

Usage:
  nice -n 5 .venv/bin/python tools/bench_targets.py \
      [--sizes=250000,1000000] [--memory_sizes=250000] [--k64_pairs=250000]

Writes synthetic dumps with `dump_teacher`'s record writer (version 2: each
record a pair's source/target ids and its top-K rows) under a temporary
directory (`--tmp`, default /tmp; deleted at the end): `--sizes` pairs of
about `--positions` target positions (uniform in positions +- 10) at K
`--k`, and `--k64_pairs` pairs at K 64. Then reads each dump in a separate
subprocess (clean peak RSS: `resource.getrusage` ru_maxrss, and the
highest RSS sampled every 20 ms from opening the dump to the end of the
pass, since ru_maxrss may be TensorFlow's own start-up) and prints a
table:

- `stream` (`StreamingTargets`, as `distill.run.stream_targets=True`
  trains): opening with every shard's sha256 checked, then one seeded,
  shuffled pass (4 shards interleaved, 16,384-record buffer);
- `stream+batches`: the same pass through `student_dataset` (student
  features, 6,144-token batches), what training pulls;
- `memory` (`TeacherTargets.load` + `attach`, the in-memory path): parsing
  every shard, then one pass of the id join;
- `floor`: a process that imports TensorFlow and reads nothing.

positions/s counts target rows (teacher positions) delivered, divided by
the pass's time (opening/loading time shown apart).
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAIRS_PER_SHARD = 4096
VOCABULARY = 10428


def write_dump(directory, pairs, positions, k, seed=0):
    """A complete synthetic version-2 dump; returns its bytes."""
    import numpy as np

    from bertkd_tf.data import teacher_targets
    from bertkd_tf.runs import dump_teacher

    os.makedirs(directory)
    rng = np.random.default_rng(seed)
    num_shards = -(-pairs // PAIRS_PER_SHARD)
    manifest = {
        "format_version": teacher_targets.FORMAT_VERSION,
        "split": "train",
        "teacher_fingerprint": "bench",
        "vocabulary_fingerprint": "bench",
        "data_fingerprint": "bench",
        "top_k": k,
        "num_passes": 7,
        "compute_dtype": "float32",
        "num_pairs": pairs,
        "pairs_per_shard": PAIRS_PER_SHARD,
        "num_shards": num_shards,
        "shards": {},
    }
    for s in range(num_shards):
        first = s * PAIRS_PER_SHARD
        count = min(PAIRS_PER_SHARD, pairs - first)
        rows = rng.integers(positions - 10, positions + 11, count)
        splits = np.concatenate([[0], np.cumsum(rows)])
        all_ids = rng.integers(5, VOCABULARY, [splits[-1], k], dtype=np.int32)
        all_logits = -np.sort(
            -rng.standard_normal([splits[-1], k]).astype(np.float16), axis=1
        )
        records = []
        for n in range(count):
            ids = all_ids[splits[n] : splits[n + 1]]
            records.append(
                teacher_targets.serialize_targets(
                    first + n,
                    ids,
                    all_logits[splits[n] : splits[n + 1]],
                    source_ids=ids[: max(1, len(ids) - 2), 0],
                    target_ids=ids[:-1, 1],
                )
            )
        name = teacher_targets.shard_name(s, num_shards)
        info = dump_teacher._write_records(
            os.path.join(directory, name), records
        )
        manifest["shards"][name] = {
            "pairs": count,
            "positions": int(rows.sum()),
            **info,
        }
    dump_teacher._update_totals(manifest)
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest["bytes"], manifest["num_positions"]


def _count_positions(dataset, key):
    import tensorflow as tf

    return int(
        dataset.reduce(
            tf.constant(0, tf.int64),
            lambda total, e: total + tf.shape(key(e), out_type=tf.int64)[0],
        )
    )


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssSampler(threading.Thread):
    """The highest resident set size seen while reading (every 20 ms): the
    reader's own peak, where ru_maxrss may be TensorFlow's start-up."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = _rss_mb()
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.02):
            self.peak = max(self.peak, _rss_mb())


def measure(mode, directory, top_k):
    """One reading in this process; returns the table row as a dict."""
    import tensorflow as tf

    from bertkd_tf.data import teacher_targets

    row = {"mode": mode, "top_k": top_k, "start_rss_mb": _rss_mb()}
    sampler = _RssSampler()
    sampler.start()
    start = time.time()
    if mode == "floor":
        tf.constant(0)
        row.update(open_s=0.0, read_s=0.0, positions=0)
    elif mode.startswith("stream"):
        stream = teacher_targets.StreamingTargets.open(directory, top_k)
        row["open_s"] = time.time() - start
        examples = stream.dataset(seed=0)
        start = time.time()
        if mode == "stream":
            row["positions"] = _count_positions(
                examples, lambda e: e["teacher_ids"]
            )
        else:
            from bertkd_tf.data.batching import (
                TokenBudgetBatcher,
                default_bucket_boundaries,
            )
            from bertkd_tf.data.student_features import student_dataset

            batcher = TokenBudgetBatcher(
                6144, default_bucket_boundaries(128), seed=0
            )
            batches = student_dataset(examples, batcher, 2, 3)
            row["positions"] = int(
                batches.reduce(
                    tf.constant(0, tf.int64),
                    lambda total, batch: (
                        total + tf.cast(tf.reduce_sum(batch[2]), tf.int64)
                    ),
                )
            )
        row["read_s"] = time.time() - start
    elif mode == "memory":
        targets = teacher_targets.TeacherTargets.load(directory, top_k)
        lengths = targets.lengths
        row["open_s"] = time.time() - start
        start = time.time()
        pairs = tf.data.Dataset.from_tensor_slices(
            {"id": targets.ids, "rows": lengths}
        ).map(
            lambda e: {
                "id": e["id"],
                "target_ids": tf.zeros([e["rows"] - 1], tf.int32),
            }
        )
        examples = targets.attach(pairs)
        row["positions"] = _count_positions(
            examples, lambda e: e["teacher_ids"]
        )
        row["read_s"] = time.time() - start
    else:
        raise ValueError(mode)
    row["positions_per_s"] = row["positions"] / max(row["read_s"], 1e-9)
    sampler.done.set()
    sampler.join()
    row["reading_peak_rss_mb"] = max(sampler.peak, _rss_mb())
    row["peak_rss_mb"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    return row


def _measure_in_subprocess(mode, directory, top_k):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    process = subprocess.run(
        [
            sys.executable,
            os.path.abspath(__file__),
            "--_measure",
            json.dumps([mode, directory, top_k]),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if process.returncode:
        sys.stderr.write(process.stderr[-4000:])
        raise RuntimeError(f"measuring {mode} on {directory} failed")
    return json.loads(process.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="250000,1000000")
    parser.add_argument("--memory_sizes", default="250000")
    parser.add_argument("--k64_pairs", type=int, default=250000)
    parser.add_argument("--positions", type=int, default=30)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--read_k", type=int, default=4)
    parser.add_argument("--batched_size", type=int, default=None)
    parser.add_argument("--tmp", default="/tmp")
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        print(json.dumps(measure(*json.loads(args._measure))))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s]
    memory_sizes = {int(s) for s in args.memory_sizes.split(",") if s}
    batched_size = args.batched_size or min(sizes)
    root = tempfile.mkdtemp(prefix="bench_targets_", dir=args.tmp)
    rows = [{**_measure_in_subprocess("floor", "", 0), "dump": "-"}]
    try:
        dumps = [(n, args.k, args.k) for n in sizes]
        if args.k64_pairs:
            dumps.append((args.k64_pairs, 64, args.read_k))
        for pairs, k, read_k in dumps:
            directory = os.path.join(root, f"k{k}_{pairs}")
            start = time.time()
            size, positions = write_dump(directory, pairs, args.positions, k)
            label = (
                f"{pairs:,} pairs, K {k} ({size / 2**30:.2f} GiB, "
                f"{positions / 1e6:.1f}M positions)"
            )
            print(f"wrote {label} in {time.time() - start:.0f} s", flush=True)
            modes = ["stream"]
            if pairs == batched_size and k == args.k:
                modes.append("stream+batches")
            if pairs in memory_sizes and k == args.k:
                modes.append("memory")
            for mode in modes:
                row = _measure_in_subprocess(mode, directory, read_k)
                row["dump"] = label
                row["open_mb_per_s"] = (
                    size / 2**20 / row["open_s"] if mode != "memory" else None
                )
                print(json.dumps(row), flush=True)
                rows.append(row)
            shutil.rmtree(directory)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(
        "| dump | reader | K read | open s (sha256 MB/s) | pass s | "
        "positions/s | RSS before MB | RSS peak reading MB | "
        "peak RSS (ru_maxrss) MB |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        opening = f"{row['open_s']:.1f}"
        if row.get("open_mb_per_s"):
            opening += f" ({row['open_mb_per_s']:.0f})"
        print(
            f"| {row['dump']} | {row['mode']} | {row['top_k'] or '-'} | "
            f"{opening} | {row['read_s']:.1f} | "
            f"{row['positions_per_s']:,.0f} | {row['start_rss_mb']:,.0f} | "
            f"{row['reading_peak_rss_mb']:,.0f} | {row['peak_rss_mb']:,.0f} |"
        )


if __name__ == "__main__":
    main()
