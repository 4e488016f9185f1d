"""Logit divergence against a baseline: top-k tables, their binary form, KL estimates and statistics.

The fourth request kind (``Backend.next_token_topk``) returns a ``TopKTable`` per text or continuation;
``compare`` turns a baseline's and a candidate's tables into per-token KL, same-top flags and actual-token
log-probs; ``TokenDivergence.statistics`` summarizes them the way llama.cpp's ``--kl-divergence`` does.
Everything here is pure numpy: no model is touched.
"""

from harness.divergence.kl import (
    KL_RESOLUTION,
    MASS_RESOLUTION,
    TokenDivergence,
    check_aligned,
    compare,
    kl_both_top_k,
    kl_full,
    kl_tail_bucket,
)
from harness.divergence.topk import (
    DEFAULT_TOP_K,
    TOPK_FORMAT_VERSION,
    TokenIds,
    TopKTable,
    concat_tables,
    decode_topk,
    encode_topk,
)

__all__ = [
    "DEFAULT_TOP_K",
    "KL_RESOLUTION",
    "MASS_RESOLUTION",
    "TOPK_FORMAT_VERSION",
    "TokenDivergence",
    "TokenIds",
    "TopKTable",
    "check_aligned",
    "compare",
    "concat_tables",
    "decode_topk",
    "encode_topk",
    "kl_both_top_k",
    "kl_full",
    "kl_tail_bucket",
]
