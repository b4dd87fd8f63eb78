"""tools/bench_train.py's per-round ratios: distill over its baseline and
each `/again` timing over the first (the A/A control)."""

from tests.tools.tool_loader import load_tool

bench_train = load_tool("bench_train")


def test_round_ratios_pair_distill_with_baseline_and_again_with_first(capsys):
    steps = {
        "baseline/bf16/xla-off": [0.40, 0.50],
        "baseline/bf16/xla-off/again": [0.44, 0.45],
        "distill/bf16/xla-off": [0.48, 0.50],
        "distill/bf16/xla-off/unfused": [0.9, 0.9],
    }
    bench_train.print_round_ratios(steps)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "baseline/bf16/xla-off/again / baseline/bf16/xla-off step, per "
        "round: 1.10, 0.90 (median 1.00, range 0.90-1.10)",
        "distill/bf16/xla-off / baseline/bf16/xla-off step, per round: "
        "1.20, 1.00 (median 1.10, range 1.00-1.20)",
    ]
