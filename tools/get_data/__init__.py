"""Download and prepare the corpora of the paper's recipes (`fetch.py`).

- `downloads.py`: `fetch(url, destination, ...)`, the one function through
  which every file is downloaded (mirror directory, checksums, atomic,
  resumable, a one-paragraph error when the network is unreachable).
- `fairseq_recipe.py`: the text steps of fairseq's prepare-iwslt14.sh (tag
  stripping, Moses tokenization, cleaning by length and ratio, lowercasing,
  the valid/test carving).
- `corpora.py`: one recipe per corpus, named like the task
  (`gin/tasks/<task>.gin`), writing `DATA_DIR/<split>.<lang>` or preparing
  the TFDS dataset the task reads.
- `fetch.py`: the command line.
"""
