"""PyTorch baselines for the speed targets: Hugging Face Marian, same size.

The student issue and the decoding issue set their targets against Hugging
Face transformers on the same machine. This script measures those figures:
a `MarianMTModel` with random weights and the CPU-sized student's shape
(d 256, 3+3 layers, 4 heads, FFN 1024, shared embeddings, vocabulary
10,428), 2 threads.

- `train`: AdamW steps on 64 x 32-token batches (64 x 32 target tokens),
  after 3 warm-up steps; prints target tokens/s.
- `generate`: `generate()` on `--batch_size` (32) random 20-token sources,
  beam 5 (length penalty 0.6) or greedy, exactly `--new_tokens` (32) new
  tokens; prints sentences/s.

`--vocabulary_size` (10,428) sets the shared embedding and output layer.
Every run ends with a line `peak RSS: N MB` (the process's ru_maxrss).
`tools/bench_vs_marian.py` runs this script and ours round-robin and
prints the ratios.

torch and transformers are not dependencies of bertkd_tf: run this from a
separate virtual environment, e.g.

    python3 -m venv /tmp/hf && /tmp/hf/bin/pip install torch transformers
    /tmp/hf/bin/python tools/baselines/hf_marian.py train --dtype bf16
    /tmp/hf/bin/python tools/baselines/hf_marian.py generate --beams 5

(`LD_PRELOAD=` a libtcmalloc, where installed, is the faster allocator the
issues' reference figures used.)
"""

import argparse
import os
import resource
import time

import torch
from transformers import MarianConfig, MarianMTModel

VOCABULARY_SIZE = 10428


def build_model(seed=0, vocabulary_size=VOCABULARY_SIZE):
    torch.manual_seed(seed)
    config = MarianConfig(
        d_model=256,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        vocab_size=vocabulary_size,
        decoder_vocab_size=vocabulary_size,
        max_position_embeddings=256,
        dropout=0.1,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        pad_token_id=0,
        eos_token_id=3,
        decoder_start_token_id=2,
        activation_function="relu",
    )
    return MarianMTModel(config)


def autocast(dtype):
    if dtype == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def train(args):
    model = build_model(vocabulary_size=args.vocabulary_size)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = torch.Generator().manual_seed(1)
    shape = (args.batch_size, args.length)

    def step():
        source = torch.randint(5, args.vocabulary_size, shape, generator=rng)
        target = torch.randint(5, args.vocabulary_size, shape, generator=rng)
        optimizer.zero_grad(set_to_none=True)
        with autocast(args.dtype):
            loss = model(
                input_ids=source,
                attention_mask=torch.ones_like(source),
                labels=target,
            ).loss
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    tokens = args.batch_size * args.length * args.steps
    print(
        f"train {args.dtype}: {tokens / seconds:.0f} target tokens/s "
        f"({args.steps} steps, {seconds:.2f} s)"
    )


def generate(args):
    model = build_model(vocabulary_size=args.vocabulary_size)
    model.eval()
    rng = torch.Generator().manual_seed(2)
    source = torch.randint(
        5, args.vocabulary_size, (args.batch_size, 20), generator=rng
    )
    kwargs = dict(
        attention_mask=torch.ones_like(source),
        num_beams=args.beams,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        early_stopping=False,
        do_sample=False,
    )
    if args.beams > 1:
        kwargs["length_penalty"] = 0.6
    with torch.inference_mode(), autocast(args.dtype):
        model.generate(source, **kwargs)  # warm-up
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.min_seconds:
            model.generate(source, **kwargs)
            calls += 1
        seconds = time.perf_counter() - start
    print(
        f"generate {args.dtype} beam {args.beams}: "
        f"{args.batch_size * calls / seconds:.1f} sentences/s ({calls} calls)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["train", "generate"])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--beams", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument(
        "--batch_size", type=int, help="default: 64 (train), 32 (generate)"
    )
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--vocabulary_size", type=int, default=VOCABULARY_SIZE)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--min_seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 64 if args.what == "train" else 32
    torch.set_num_threads(2)
    print(
        f"torch {torch.__version__}, LD_PRELOAD="
        f"{os.environ.get('LD_PRELOAD', '')!r}, 2 threads"
    )
    train(args) if args.what == "train" else generate(args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak:.0f} MB")


if __name__ == "__main__":
    main()
