"""tools/bench_vs_marian.py reads the figures out of our benches' tables and
the peer script's lines; a change of either format must fail here, not
silently mis-read a benchmark."""

import argparse
import sys

import pytest

from tests.tools.tool_loader import load_tool

bench = load_tool("bench_vs_marian")
ARGS = argparse.Namespace(
    marian_python="/peer/python",
    train_steps=15,
    min_seconds=5.0,
    decode_dtype="float32",
)


def test_training_rows_are_parsed_from_both_tables():
    ours, peer, parse_ours, parse_peer = bench.commands("train-30522", ARGS)
    assert "--vocabulary_size=30522" in ours
    assert "--only=baseline/bf16/xla-off" in ours
    assert peer[:3] == ["/peer/python", peer[1], "train"]
    assert "--vocabulary_size=30522" in peer
    # bench_train.py's row format, and a distill row that must not match.
    table = (
        "| distill/bf16/xla-off               |  0.600 |     3413 |"
        "   0.150 |             40.0% |\n"
        "| baseline/bf16/xla-off              |  0.438 |     4677 |"
        "   0.173 |             45.2% |\n"
    )
    assert parse_ours(table) == 4677
    assert parse_peer("train bf16: 2705 target tokens/s (15 steps, 1.2 s)") == (
        2705
    )


def test_decoding_rows_pick_the_search_and_batch_asked_for():
    ours, peer, parse_ours, parse_peer = bench.commands(
        "beam5-b32-n128-phases", ARGS
    )
    assert "--new_tokens=128" in ours and "--prefix_phases" in ours
    assert "--dtype=float32" in ours and "--batch_sizes=32" in ours
    assert "--beams=5" in peer and "--new_tokens=128" in peer
    table = (
        "| beam 5 | 1 | on | yes | 1 | 12.7 | 419 |\n"
        "| beam 5 | 32 | on | yes | 2 | 69.5 | 2293 |\n"
        "| greedy | 32 | on | yes | 1 | 189.4 | 6250 |\n"
    )
    assert parse_ours(table) == pytest.approx(69.5)
    _, _, parse_greedy, _ = bench.commands("greedy-b32-n32", ARGS)
    assert parse_greedy(table) == pytest.approx(189.4)
    assert parse_peer(
        "generate bf16 beam 5: 30.3 sentences/s (31 calls)"
    ) == pytest.approx(30.3)
    no_phases, *_ = bench.commands("beam5-b32-n128", ARGS)
    assert "--prefix_phases" not in no_phases


def test_a_missing_figure_is_an_error_naming_the_pattern():
    _, _, parse_ours, _ = bench.commands("beam5-b1-n32", ARGS)
    with pytest.raises(RuntimeError, match="no match"):
        parse_ours("| beam 5 | 32 | on | yes | 2 | 69.5 | 2293 |\n")


def test_failed_process_is_reported_with_its_output():
    with pytest.raises(RuntimeError, match="exited with 3"):
        bench.run([sys.executable, "-c", "print('boom'); raise SystemExit(3)"])
    out, rss = bench.run([sys.executable, "-c", "print('fine')"])
    assert out == "fine\n" and rss > 1
