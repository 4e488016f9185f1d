"""The profiler on the real SmolLM2 MoE test bed (built on first use): routing is real and uneven."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.testbed]


def test_profile_testbed_on_c4() -> None:
    import torch

    from harness.backends import open_backend
    from harness.profiler import dead_expert_curve, profile_model, trace_routes
    from harness.prompts_io import read_prompts
    from harness.resources import data_dir
    from harness.testbed import ensure_testbed

    backend = open_backend(str(ensure_testbed()), device="cpu")
    prompts = read_prompts(data_dir() / "c4_validation_sample_2k.jsonl.gz")[:20]
    prof = profile_model(backend.model, backend.tokenizer, [p.text for p in prompts], max_tokens=64, progress=False)
    summary = prof.summary()
    assert prof.top_k < prof.num_experts
    assert 0.3 < summary["overall"]["entropy_ratio_mean"] < 0.995  # uneven, but not collapsed
    curve = dead_expert_curve(prof, shuffles=3)
    assert list(curve.dead_fraction) == sorted(curve.dead_fraction, reverse=True)
    # the backend's route trace sees the same routes as the profile did for the first prompt
    ids = backend.tokenizer(prompts[0].text, return_tensors="pt")["input_ids"][:, :64]
    traced = trace_routes(backend.model, ids)
    assert [layer for layer, _, _ in traced] == prof.layer_indices()
    for (_, expert_ids, weights), lp in zip(traced, prof.layers, strict=True):
        counts = np.bincount(expert_ids.reshape(-1).numpy(), minlength=prof.num_experts)
        np.testing.assert_array_equal(counts, lp.per_prompt_counts[0])
        assert weights.shape == expert_ids.shape and bool(torch.isfinite(weights).all())
