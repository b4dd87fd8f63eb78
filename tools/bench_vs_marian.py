r"""Our student against Hugging Face Marian of the same size, interleaved.

    python tools/bench_vs_marian.py --marian_python=/tmp/hf/bin/python \
        [--rounds 2] [--only train-10428,beam5-b32-n32,...]

Runs, round-robin for `--rounds` rounds, each measurement as its own
process, ours then the peer's, so both see the same stretch of this VM's
drifting speed:

- `train-V`: training tokens/s, 64 x 32 target tokens a step,
  mixed_bfloat16 / bf16 autocast, vocabulary V (10,428: Multi30k's task
  vocabulary; 30,522: BERT's), ours `tools/bench_train.py
  --only=baseline/bf16/xla-off`, the peer's `tools/baselines/hf_marian.py
  train`;
- `beam5-bB-nN` and `greedy-bB-nN`: decoding sentences/s of B random
  20-token sources, exactly N new tokens (the random model never says EOS),
  vocabulary 10,428; ours `tools/bench_decode.py` (XLA on, the cache, the
  default `Generator`, `--decode_dtype`: float32 by default, our fastest
  search where the CPU has no AMX), the peer's `hf_marian.py generate`
  (bf16 autocast, its fastest); `beam5-bB-nN-phases` runs ours with
  `prefix_phases` (the search in phases over a growing prefix of the
  cache, our option for long outputs, off by default); the
  process's peak RSS (ru_maxrss, from `os.wait4`) is the decoding memory.

Prints one row per measurement: the medians, their ratio (ours / the
peer's, > 1 is faster; for memory < 1 is smaller) and each round's
figures. The peer runs from a separate virtual environment with torch and
transformers (`--marian_python`); `LD_PRELOAD` (a tcmalloc) is passed to
both when set.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
DEFAULT_ONLY = (
    "train-10428,train-30522,beam5-b32-n32,beam5-b32-n128,beam5-b1-n32,"
    "greedy-b32-n32"
)


def run(command):
    """`(stdout, peak RSS in MB)` of `command` run to completion."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(
            f"{' '.join(command)} exited with {process.returncode}:\n{output}"
        )
    return output, usage.ru_maxrss / 1024


def number(pattern, text):
    match = re.search(pattern, text, re.MULTILINE)
    if not match:
        raise RuntimeError(f"no match for {pattern!r} in:\n{text}")
    return float(match.group(1).replace(",", ""))


def commands(name, args):
    """`(ours, peer's, parse ours, parse the peer's)` for a measurement."""
    ours_python, peer = sys.executable, args.marian_python
    marian = os.path.join(TOOLS, "baselines", "hf_marian.py")
    kind, *rest = name.split("-")
    if kind == "train":
        vocabulary = rest[0]
        return (
            [
                ours_python,
                os.path.join(TOOLS, "bench_train.py"),
                f"--vocabulary_size={vocabulary}",
                "--only=baseline/bf16/xla-off",
                f"--steps={args.train_steps}",
            ],
            [
                peer,
                marian,
                "train",
                "--dtype=bf16",
                f"--vocabulary_size={vocabulary}",
                f"--steps={args.train_steps}",
            ],
            lambda out: number(
                r"^\| baseline/bf16/xla-off\s*\|\s*[\d.]+\s*\|\s*(\d+)", out
            ),
            lambda out: number(r"(\d+) target tokens/s", out),
        )
    batch, new_tokens = int(rest[0][1:]), int(rest[1][1:])
    phases = rest[2:] == ["phases"]
    beams = 5 if kind == "beam5" else 1
    label = "beam 5" if beams == 5 else "greedy"
    return (
        [
            ours_python,
            os.path.join(TOOLS, "bench_decode.py"),
            "--vocabulary_size=10428",
            f"--dtype={args.decode_dtype}",
            f"--batch_sizes={batch}",
            f"--new_tokens={new_tokens}",
            f"--min_seconds={args.min_seconds}",
            "--skip_no_xla",
            "--skip_no_cache",
            "--mixed_batches=0",
        ]
        + (["--prefix_phases"] if phases else []),
        [
            peer,
            marian,
            "generate",
            "--dtype=bf16",
            f"--beams={beams}",
            f"--batch_size={batch}",
            f"--new_tokens={new_tokens}",
            f"--min_seconds={args.min_seconds}",
        ],
        lambda out: number(
            rf"^\| {label} \| {batch} \| on \| yes \|[^|]*\|\s*([\d.]+)", out
        ),
        lambda out: number(r"([\d.]+) sentences/s", out),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--marian_python", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", default=DEFAULT_ONLY)
    parser.add_argument("--train_steps", type=int, default=15)
    parser.add_argument("--min_seconds", type=float, default=5.0)
    parser.add_argument(
        "--decode_dtype",
        default="float32",
        help="our decoding dtype policy (float32: our fastest search on "
        "CPUs without AMX, docs/PERFORMANCE.md; mixed_bfloat16)",
    )
    args = parser.parse_args()
    names = args.only.split(",")
    figures = {name: {"ours": [], "peer": [], "rss": []} for name in names}
    for round_index in range(args.rounds):
        for name in names:
            ours, peer, parse_ours, parse_peer = commands(name, args)
            out, rss_ours = run(ours)
            figures[name]["ours"].append(parse_ours(out))
            out, rss_peer = run(peer)
            figures[name]["peer"].append(parse_peer(out))
            figures[name]["rss"].append((rss_ours, rss_peer))
            print(
                f"round {round_index + 1}: {name}: ours "
                f"{figures[name]['ours'][-1]:,.1f} ({rss_ours:,.0f} MB), "
                f"Marian {figures[name]['peer'][-1]:,.1f} "
                f"({rss_peer:,.0f} MB)",
                flush=True,
            )
    print(
        f"\nLD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}, "
        f"{os.cpu_count()} CPUs, medians of {args.rounds} rounds "
        "(train: target tokens/s; decoding: sentences/s)\n"
    )
    print(
        "| measurement | ours | Marian | ours / Marian | peak RSS ours MB "
        "| peak RSS Marian MB | RSS ours / Marian |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        ours = statistics.median(figures[name]["ours"])
        peer = statistics.median(figures[name]["peer"])
        rss_ours = statistics.median(r[0] for r in figures[name]["rss"])
        rss_peer = statistics.median(r[1] for r in figures[name]["rss"])
        print(
            f"| {name} | {ours:,.1f} | {peer:,.1f} | {ours / peer:.2f}x "
            f"| {rss_ours:,.0f} | {rss_peer:,.0f} | {rss_ours / rss_peer:.2f} |"
        )


if __name__ == "__main__":
    main()
