"""The memory a load needs: the smallest RAM cap that still answers, and the peak.

Two tables, each run for bare transformers and for Nibble, in fresh processes:

`caps`: the smallest memory cap under which `generate default --quant Q --greedy
--max-new-tokens 8` (Nibble) or the same `from_pretrained` + `generate` written
bare still loads and answers. The cap is a memory cgroup around the process
(v1 `memory.limit_in_bytes`, else v2 `memory.max`; needs root); page cache counts
against it but can be reclaimed. Before each run the checkpoint's cached pages are
dropped (`posix_fadvise(DONTNEED)`), so that every run reads the file under its own
cap. A bisection to `--step` MiB; a run that takes longer than `--timeout` counts as
failing (a cap that only thrashes is no use).

`scale`: random-weight Llama models shaped like SmolLM2 135M, 360M and 1.7B, saved
as fp32 safetensors in at least two shards under a temporary folder (deleted
afterwards; 1.7B takes ~7 GB), each loaded in nf4 and int8 while a thread samples
RssAnon (/proc/self/status) every millisecond. The anonymous peak above the
process before the load is compared with the bound: true bytes + the largest
tensor's fp32 bytes + 64 MiB, and with the estimate's "peak during load".

    .venv/bin/python bench/load_memory.py caps [--quant fp32,nf4,int8] [--ways bare,nibble]
    .venv/bin/python bench/load_memory.py scale [--sizes 135m,360m,1.7b] [--quant nf4,int8]

`--nibble-root DIR` runs Nibble from another checkout (the "before" rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _common import ROOT  # also puts the project on sys.path

MiB = 2**20
PROMPT = "What is the capital of France?"
QUANTS = {  # as Nibble's presets set them
    "fp32": None,
    "nf4": {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"},
    "int8": {"load_in_8bit": True},
    "nf4-dq": {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "float16",
    },
    "fp4": {"load_in_4bit": True, "bnb_4bit_quant_type": "fp4"},
}
SHAPES = {  # SmolLM2's configs
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
             "num_attention_heads": 9, "num_key_value_heads": 3},
    "360m": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
             "num_attention_heads": 15, "num_key_value_heads": 5},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
             "num_attention_heads": 32, "num_key_value_heads": 32},
}  # fmt: skip


# -- in the child: the runs being measured --


def bare_generate(quant: str, path: str) -> None:
    """Load and answer as a user's script would: transformers and bitsandbytes only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs: dict[str, object] = {"device_map": "cpu", "dtype": torch.float32}
    if QUANTS[quant]:
        kwargs["quantization_config"] = BitsAndBytesConfig(**QUANTS[quant])
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :]))


def _anon() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def peak_load(way: str, quant: str, path: str) -> dict[str, object]:
    """Load once; the anonymous peak during the load above the process before it."""
    import threading

    from core.stack import import_stack

    import_stack(bitsandbytes=quant != "fp32")  # the imports are not the load's
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoTokenizer,
        BitsAndBytesConfig,
    )

    from core import memory
    from core.model import catalog, loader
    from core.settings import preset

    AutoTokenizer.from_pretrained(path)
    with torch.device("meta"):  # the modeling code's import, not the load's either
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    loader._tokenizer(path, False)  # cached: the load reuses it
    memory.trim_heap()  # freed heap from the imports would blur the baseline
    base = _anon()
    peak = base
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _anon())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    if way == "bare":
        kwargs: dict[str, object] = {"device_map": "cpu", "dtype": torch.float32}
        if QUANTS[quant]:
            kwargs["quantization_config"] = BitsAndBytesConfig(**QUANTS[quant])
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        true = loader.true_bytes(model)
        mapped = memory.mapped_bytes(model)
        path_ran = "from_pretrained"
    else:
        p = preset(quant)
        loaded = loader.load(catalog.resolve(path), p.quant, p.load_options())
        true = loaded.report.true_bytes
        mapped = loaded.report.mapped_bytes
        path_ran = getattr(loaded.report, "load_path", "from_pretrained")
    done.set()
    sampler.join()
    peak = max(peak, _anon())
    return {
        "peak": peak - base,
        "after": _anon() - base,
        "mapped": mapped,  # stays in the checkpoint's pages: RAM it needs too
        "true": true,
        "path": path_ran,
    }


# -- in the parent: cgroups, bisection, tables --


class Cgroup:
    """A memory cgroup of our own (v1 or v2); processes are moved in by pid."""

    def __init__(self) -> None:
        name = f"nibble-bench-{os.getpid()}"
        v1 = Path("/sys/fs/cgroup/memory")
        v2 = Path("/sys/fs/cgroup")
        if (v1 / "memory.limit_in_bytes").exists():
            self.dir, self.limit_file = v1 / name, "memory.limit_in_bytes"
            self.peak_file = "memory.max_usage_in_bytes"
        elif (v2 / "cgroup.controllers").exists():
            self.dir, self.limit_file, self.peak_file = (
                v2 / name,
                "memory.max",
                "memory.peak",
            )
        else:
            raise SystemExit("no memory cgroup here: `caps` needs cgroup v1 or v2")
        self.dir.mkdir()

    def limit(self, nbytes: int | None) -> None:
        value = "max" if nbytes is None and self.limit_file == "memory.max" else None
        if nbytes is None and value is None:
            value = "-1"
        (self.dir / self.limit_file).write_text(value or str(nbytes))
        with contextlib.suppress(OSError):
            (self.dir / self.peak_file).write_text("0")

    def peak(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int((self.dir / self.peak_file).read_text())
        return None

    def enter(self) -> None:  # runs in the child between fork and exec
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.dir.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def drop_cache(folder: Path) -> None:
    """Evict the checkpoint's clean pages so that the next run reads it again."""
    for f in folder.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def command(way: str, quant: str, path: Path, nibble_root: Path) -> list[str]:
    if way == "bare":
        return [sys.executable, __file__, "--bare", quant, str(path)]
    cmd = [sys.executable, str(nibble_root / "main.py"), "generate", "default"]
    if quant != "fp32":
        cmd += ["--quant", quant]
    return [*cmd, "--greedy", "--max-new-tokens", "8", "--prompt", PROMPT]


def attempt(
    group: Cgroup, cap: int | None, cmd: list[str], path: Path, timeout: float
) -> tuple[bool, int | None, str]:
    drop_cache(path)
    group.limit(cap)
    try:
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=group.enter,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False, group.peak(), "timeout"
    ok = out.returncode == 0 and bool(out.stdout.strip())
    return ok, group.peak(), out.stdout.strip()[-80:] if ok else f"rc {out.returncode}"


def smallest_cap(
    group: Cgroup, cmd: list[str], path: Path, step: int, timeout: float
) -> dict[str, object]:
    ok, peak, answer = attempt(group, None, cmd, path, timeout * 2)
    if not ok or peak is None:
        return {"error": answer}
    hi, lo = peak, 64 * MiB
    while hi - lo > step * MiB:
        mid = (hi + lo) // 2 // MiB * MiB
        passed, _, text = attempt(group, mid, cmd, path, timeout)
        print(
            f"    {mid / MiB:.0f} MiB: {'answers' if passed else text}", file=sys.stderr
        )
        if passed:
            hi, answer = mid, text
        else:
            lo = mid
    return {"cap": hi, "unlimited_peak": peak, "answer": answer}


def caps(args: argparse.Namespace) -> list[dict[str, object]]:
    from core.model import default_model

    path = default_model.ensure()
    group = Cgroup()
    rows = []
    try:
        for quant in args.quant.split(","):
            for way in args.ways.split(","):
                print(f"{way} {quant}:", file=sys.stderr)
                cmd = command(way, quant, path, Path(args.nibble_root))
                if quant in args.at:  # only whether it answers under this cap
                    cap = args.at[quant] * MiB
                    ok, _, text = attempt(group, cap, cmd, path, args.timeout)
                    row = {"at": cap, "answers": ok, "answer": text}
                else:
                    row = smallest_cap(group, cmd, path, args.step, args.timeout)
                rows.append({"way": way, "quant": quant, **row})
                print(f"  {row}", file=sys.stderr)
    finally:
        group.remove()
    return rows


def caps_table(rows: list[dict[str, object]], label: str) -> str:
    quants = list(dict.fromkeys(str(r["quant"]) for r in rows))
    ways = list(dict.fromkeys(str(r["way"]) for r in rows))
    lines = [
        "| run | " + " | ".join(quants) + " |",
        "|---" * (len(quants) + 1) + "|",
    ]
    for way in ways:
        cells = []
        for q in quants:
            r = next(r for r in rows if r["way"] == way and r["quant"] == q)
            cap = r.get("cap")
            if "at" in r:
                word = "answers" if r["answers"] else f"fails ({r['answer']})"
                cells.append(f"{word} at {int(r['at']) / MiB:.0f} MiB")  # type: ignore[call-overload]
            else:
                cells.append(
                    f"{int(cap) / MiB:.0f} MiB" if cap else str(r.get("error"))
                )
        name = "bare transformers" if way == "bare" else f"Nibble ({label})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def random_model(size: str, parent: Path) -> Iterator[Path]:
    """A random-weight fp32 Llama of this shape in ≥ 2 safetensors shards."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, LlamaConfig

    from core.model import default_model

    folder = Path(tempfile.mkdtemp(prefix=f"llama-{size}-", dir=parent))
    try:
        config = LlamaConfig(
            vocab_size=49152, tie_word_embeddings=True, head_dim=64,
            max_position_embeddings=8192, dtype="float32", **SHAPES[size],
        )  # fmt: skip
        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config)
        tied = set(meta.get_expanded_tied_weights_keys(all_submodels=True))
        shapes = {n: p.shape for n, p in meta.named_parameters() if n not in tied}
        total = sum(s.numel() * 4 for s in shapes.values())
        per_shard = total // 3 + 1
        generator = torch.Generator().manual_seed(0)
        shards: list[dict[str, torch.Tensor]] = [{}]
        size_now = 0
        for name, shape in shapes.items():
            if size_now >= per_shard:
                shards.append({})
                size_now = 0
            if name.endswith("norm.weight"):
                tensor = torch.ones(shape)
            else:
                tensor = torch.randn(shape, generator=generator) * 0.02
            shards[-1][name] = tensor
            size_now += tensor.numel() * 4
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / file), metadata={"format": "pt"})
            weight_map |= dict.fromkeys(shard, file)
            shard.clear()
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
        )
        config.save_pretrained(folder)
        source = default_model.ensure()
        for f in source.iterdir():  # the same tokenizer: the vocabulary matches
            if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
                shutil.copy(f, folder / f.name)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def largest_tensor(folder: Path) -> int:
    from safetensors import safe_open

    largest = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():
                shape = fh.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                largest = max(largest, n * 4)
    return largest


def predicted_peak(folder: Path, quant: str) -> int | None:
    from core.model import estimate as est
    from core.model.fit import DeviceInfo
    from core.settings import preset

    p = preset(quant)
    device = DeviceInfo([], 64 * 2**30, 64 * 2**30, False)
    row = est.estimate(str(folder), p.quant, p.load_options(), device=device)
    return getattr(row, "load_peak_bytes", None)


def scale(args: argparse.Namespace) -> list[dict[str, object]]:
    parent = Path(args.dir or tempfile.gettempdir())
    rows = []
    for size in args.sizes.split(","):
        need = sum(4 * _params(size) for _ in (0,)) * 1.1
        free = shutil.disk_usage(parent).free
        if free < need:
            print(
                f"{size}: {need / 2**30:.1f} GiB needed, {free / 2**30:.1f} free: skipped"
            )
            continue
        print(f"building the random {size} model ...", file=sys.stderr)
        with random_model(size, parent) as folder:
            shards = len(list(folder.glob("*.safetensors")))
            big = largest_tensor(folder)
            for quant in args.quant.split(","):
                predicted = predicted_peak(folder, quant)
                for way in args.ways.split(","):
                    cmd = [sys.executable, __file__, "--peak", way, quant, str(folder)]
                    if way == "nibble" and args.nibble_root != str(ROOT):
                        cmd = [sys.executable, __file__, "--peak", way, quant, str(folder),
                               "--nibble-root", args.nibble_root]  # fmt: skip
                    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
                    if out.returncode != 0:
                        print(out.stderr[-2000:], file=sys.stderr)
                        continue
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                    bound = int(r["true"]) + big + 64 * MiB
                    row = {"size": size, "shards": shards, "quant": quant, "way": way,
                           **r, "largest": big, "bound": bound, "predicted": predicted}  # fmt: skip
                    print(f"  {row}", file=sys.stderr)
                    rows.append(row)
    return rows


def _params(size: str) -> int:
    s = SHAPES[size]
    h, i, n = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"]
    kv = s["num_key_value_heads"] * 64
    return 49152 * h + n * (2 * h * h + 2 * h * kv + 3 * h * i)


def scale_table(rows: list[dict[str, object]]) -> str:
    lines = [
        "| model | preset | way | true bytes | largest tensor (fp32) | anon peak "
        "| bound | within | after + mapped | estimate's peak | estimate / needs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak, bound = int(r["peak"]), int(r["bound"])  # type: ignore[call-overload]
        after = int(r["after"]) + int(r["mapped"])  # type: ignore[call-overload]
        need = max(peak, after)
        pred = r["predicted"]
        ratio = f"{int(pred) / need:.3f}" if pred and r["way"] == "nibble" else ""  # type: ignore[call-overload]
        lines.append(
            f"| {r['size']} ({r['shards']} shards) | {r['quant']} | {r['way']} "
            f"| {int(r['true']) / MiB:.0f} MiB | {int(r['largest']) / MiB:.0f} MiB "  # type: ignore[call-overload]
            f"| {peak / MiB:.0f} MiB | {bound / MiB:.0f} MiB "
            f"| {'yes' if peak <= bound else 'no'} | {after / MiB:.0f} MiB "
            f"| {int(pred) / MiB:.0f} MiB | {ratio} |"  # type: ignore[call-overload]
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=("caps", "scale"), default="caps")
    parser.add_argument("--quant", default=None)
    parser.add_argument("--ways", default="bare,nibble")
    parser.add_argument("--sizes", default="135m,360m,1.7b")
    parser.add_argument("--dir", default=None, help="where to build the random models")
    parser.add_argument("--nibble-root", default=str(ROOT))
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--step", type=int, default=8, help="bisection step, MiB")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument(
        "--at",
        default="",
        help="instead of bisecting, try one cap per preset: nf4=420,int8=480 (MiB)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--bare", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--peak", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_generate(*args.bare)
        return
    if args.peak:
        if args.nibble_root != str(ROOT):  # another checkout's core
            sys.path.insert(0, args.nibble_root)
            for name in [
                m for m in sys.modules if m == "core" or m.startswith("core.")
            ]:
                del sys.modules[name]
        print(json.dumps(peak_load(*args.peak)))
        return
    args.at = {k: int(v) for k, v in (x.split("=") for x in args.at.split(",") if x)}
    if args.what == "caps":
        args.quant = args.quant or "fp32,nf4,int8"
        rows = caps(args)
        print(json.dumps(rows, indent=2) if args.json else caps_table(rows, args.label))
    else:
        args.quant = args.quant or "nf4,int8"
        rows = scale(args)
        print(json.dumps(rows, indent=2) if args.json else scale_table(rows))


if __name__ == "__main__":
    main()
