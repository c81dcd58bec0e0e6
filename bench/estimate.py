"""How long the estimate of every preset takes, for a 70B-class Llama and the default.

Cold: the first table for a config (builds the model on the meta device, once per
dtype), after the process has estimated once (the first estimate imports the modeling
code, reported apart). Warm: the same config again, as the window recomputes it on every settings
change. The target is under 1 s each; torch + transformers import time is shown apart.

    .venv/bin/python bench/estimate.py
"""

from __future__ import annotations

import time

import _common  # noqa: F401  (puts the repository on sys.path)

# Llama-3-70B's shape: 80 layers, hidden 8192, GQA with 8 KV heads, 128k vocab.
LLAMA_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "dtype": "bfloat16",
    "_name_or_path": "llama-70b-class (config only)",
}


def main() -> None:
    from core.model import estimate
    from core.model.fit import DeviceInfo, Gpu
    from core.units import format_bytes

    started = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401

    print(f"import torch + transformers: {time.perf_counter() - started:.2f} s")
    # The first estimate in a process imports the modeling and quantizer code.
    small = {**LLAMA_70B, "hidden_size": 64, "intermediate_size": 128}
    small.update(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    started = time.perf_counter()
    estimate.table(small, context=64, device=DeviceInfo([], 2**35, 2**34, False))
    print(
        f"first estimate in the process (imports): {time.perf_counter() - started:.2f} s"
    )
    gpu = DeviceInfo([Gpu(0, "80 GB GPU", 80 * 2**30, 79 * 2**30)], 2**37, 2**36, True)
    cpu = DeviceInfo([], 2**35, 2**34, False)
    cases = [
        ("70B Llama, 80 GB GPU", LLAMA_70B, gpu),
        ("70B Llama, no GPU", LLAMA_70B, cpu),
        ("default (SmolLM2-135M), no GPU", "default", cpu),
    ]
    for title, model, device in cases:
        times = []
        for _ in range(4):
            t = time.perf_counter()
            result = estimate.table(model, context=4096, device=device)
            times.append(time.perf_counter() - t)
        warm = sorted(times[1:])[1]
        print(
            f"{title}: cold {times[0]:.3f} s, warm {warm * 1000:.1f} ms (median of 3)"
        )
        for row in result.rows[1:]:
            print(
                f"    {row.preset:7} total {format_bytes(row.total_bytes):>11}  "
                f"weights+state {format_bytes(row.model_bytes):>11}  {row.verdict}"
            )
        print(f"    recommended: {result.recommended}")


if __name__ == "__main__":
    main()
