"""The monitor on a real CUDA GPU: load the default model in nf4 on cuda:0, compare
NVML's view of our process with torch's, generate 32 tokens, print one JSON object.

Checks that our process's NVML memory is at least torch's reserved memory (the rest is
the CUDA context and kernels) and measures what one sample costs with a GPU present.
Exit code 0 when every check holds or there is no GPU to check (then "skipped"
says why), 1 when a check fails.

    .venv/bin/python bench/gpu_check.py
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _common import time_calls  # also puts the project on sys.path

from core import monitor

TOKENS = 32
PROMPT = "What is the capital of France?"


def ours(sample: monitor.Sample, index: int) -> monitor.GpuSample | None:
    return next((g for g in sample.gpus if g.index == index), None)


def gpu_dict(g: monitor.GpuSample | None) -> dict[str, Any] | None:
    return None if g is None else g.__dict__.copy()


def sample_cost(sampler: monitor.Sampler, n: int = 200) -> dict[str, float]:
    return {k: round(v, 3) for k, v in time_calls(sampler.sample, n).items()}


def main() -> int:
    result: dict[str, Any] = {"ok": False, "skipped": None}
    sampler = monitor.Sampler()
    before = sampler.sample()
    result["gpu_reason"] = before.gpu_reason
    if not before.gpus:
        result["skipped"] = before.gpu_reason
        print(json.dumps(result))
        return 0
    import torch

    from core.generation import decode
    from core.model import catalog, loader
    from core.settings import GenerationSettings, LoadOptions, preset

    if not torch.cuda.is_available():
        result["skipped"] = "NVML sees a GPU but torch has no CUDA"
        print(json.dumps(result))
        return 0
    result["torch"] = torch.__version__
    result["cost_before_cuda"] = sample_cost(sampler)
    chosen = preset("nf4")
    options = chosen.load_options(LoadOptions(device_map="cuda:0"))
    loaded = loader.load(catalog.resolve("default"), chosen.quant, options)
    torch.cuda.synchronize()
    after_load = sampler.sample()
    text, stats = decode.generate_text(
        loaded, PROMPT, GenerationSettings(max_new_tokens=TOKENS, greedy=True)
    )
    torch.cuda.synchronize()
    after_generate = sampler.sample()
    result["cost_with_cuda"] = sample_cost(sampler)

    uuid = str(torch.cuda.get_device_properties(0).uuid)
    index = sampler.torch_indices(torch.cuda)
    nvml_index = next((k for k, v in index.items() if v == 0), None)
    result["cuda0_uuid"] = uuid
    result["nvml_index_of_cuda0"] = nvml_index
    g0, g1, g2 = (
        ours(s, nvml_index if nvml_index is not None else -1)
        for s in (before, after_load, after_generate)
    )
    result["before"], result["after_load"], result["after_generate"] = (
        gpu_dict(g0),
        gpu_dict(g1),
        gpu_dict(g2),
    )
    result["host_rss_after_load"] = after_load.host.process_rss
    result["report"] = loaded.report.to_dict()
    result["answer"] = text
    result["stats"] = stats.to_dict()
    checks: dict[str, Any] = {}
    for name, g in (("after_load", g1), ("after_generate", g2)):
        if g is None or g.process_memory is None or g.torch_reserved is None:
            checks[name] = "process memory or torch counters not visible"
            continue
        context = g.process_memory - g.torch_reserved
        checks[name] = {
            "nvml_process_bytes": g.process_memory,
            "torch_reserved_bytes": g.torch_reserved,
            "torch_allocated_bytes": g.torch_allocated,
            "cuda_context_bytes": context,
            "nvml_at_least_reserved": context >= 0,
        }
    result["checks"] = checks
    result["tokens"] = stats.new_tokens
    result["ok"] = (
        all(
            isinstance(c, dict) and c["nvml_at_least_reserved"] for c in checks.values()
        )
        and stats.new_tokens > 0
        and "paris" in text.lower()
    )
    loader.unload(loaded)
    sampler.close()
    print(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
