"""bertkd_tf: distilling knowledge learned in BERT into seq2seq students."""

__version__ = "0.1.0"
