"""What a student must provide: to be trained with KD, and to be searched.

A student is a `keras.Model`. The training side (`DistillationModel`) and
the search side (`decode_student`, `Generator`, `ServingModule`) ask it for
capabilities, never for a class:

1. **Trainable with KD** (`KDStudent`, every student): called on the
   student features of docs/ARCHITECTURE.md (`encoder_token_ids`,
   `encoder_padding_mask`, `decoder_token_ids`, `decoder_padding_mask`),
   it returns teacher-forced next-token logits `[batch, decoder_length,
   vocabulary]`, float32. `DistillationModel` then computes the
   cross-entropy and the top-K KD term on those logits.
2. **Fused output layer** (`TiedOutputStudent`, optional): a student whose
   output layer is the transposed token embedding can hand over the final
   decoder states instead, and `DistillationModel` computes the output
   layer and both loss terms in one function
   (`losses.tied_output_cross_entropies`), much faster on a CPU. It
   provides `call_with_hidden(inputs, training)` -> `(logits, hidden)` and
   `tied_output_embedding`, the `[vocabulary, d]` matrix with `logits ==
   float32(hidden @ tied_output_embedding^T)`, or None when the output
   layer is not exactly that (then the logits path is used).
3. **Searchable** (`SearchableStudent`, defined with the search in
   `decoding/next_token.py`): `call_encoder(ids, mask)` once, then
   `next_token(encoder_outputs, mask, settings=, buffer_length=, bos_id=)`
   -> `NextToken`, a next-token function with its cache. Beam and greedy
   search (`decode_student`) run any such student.

`TransformerSeq2Seq` provides all three (its search step is
`IncrementalDecoder`); `RecurrentSeq2Seq` provides 1 and 3 (plain logits
with a bias, a GRU state as its cache), so it trains on the logits path.

Example:
```python
isinstance(TransformerSeq2Seq(backbone), TiedOutputStudent)  # True
fusable_output_embedding(RecurrentSeq2Seq(...))              # None
```
"""

from typing import Protocol, runtime_checkable

# F401: the search side of the protocol, defined with the search.
from bertkd_tf.decoding.next_token import (  # noqa: F401
    NextToken,
    SearchableStudent,
)


@runtime_checkable
class KDStudent(Protocol):
    """Callable on the student features; returns float32 logits
    `[batch, decoder_length, vocabulary]` (a `keras.Model`)."""

    def __call__(self, inputs, training=None): ...


@runtime_checkable
class TiedOutputStudent(Protocol):
    """A student whose output layer `DistillationModel` can fuse with the
    losses (see the module docstring)."""

    def call_with_hidden(self, inputs, training=None): ...

    @property
    def tied_output_embedding(self): ...


def fusable_output_embedding(student):
    """The student's tied output embedding if the fused loss can use it
    (a `TiedOutputStudent` whose `tied_output_embedding` is not None),
    else None."""
    if not isinstance(student, TiedOutputStudent):
        return None
    return student.tied_output_embedding
