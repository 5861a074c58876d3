"""Benchmark: the cost of applying `<ljl:J:Σ>` with a new Σ against the built-in `<lora:J:w>` with a
new weight, for an SD1.5 rank-64 joined LoRA (two rank-32 LoRAs on every SD1.5 LoRA target, real
shapes), both measured in one run against the WebUI test double's layers (tests/host_double).

"Applying" is what a generation pays before sampling: the host's extra-network activation (the
built-in `lora` handler, then this extension's hook) and the merge of every patched layer
(`networks.network_apply_weights`, restore + ΔW).  Each round uses a new weight / a new Σ, so both
paths re-merge every layer.  The target is ljl/lora ≤ 1.2, and a Σ change must read nothing from disk.

    .venv/bin/python bench/bench_runtime.py [--rounds 7] [--threads 1] [--rank 32] [--device cuda] [--dtype fp16]

With --device cuda the model's layers live on the GPU as in the WebUI (the host keeps LoRA factors and
weight backups on the CPU and merges on the layer's device); --dtype fp16 is the WebUI's usual dtype.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from lora_merge_ext import api, loading  # noqa: E402
from lora_factory import make_lora  # noqa: E402
from host_double.harness import spec_rows, start_host  # noqa: E402

TARGET = 1.2


def make_files(lora_dir: Path, rank: int) -> Path:
    a = make_lora(lora_dir / "A.safetensors", "sd15_lora", rank=rank, seed=1)
    b = make_lora(lora_dir / "B.safetensors", "sd15_lora", rank=rank, seed=2)
    joined = api.merge([str(a), str(b)], mode="concat").lora
    return Path(api.save(joined, lora_dir / "J.safetensors").path)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def apply_cost(host, prompt: str) -> float:
    """Seconds to activate the prompt's extra networks and merge them into every layer."""
    from modules import extra_networks
    p = host.processing(prompt=prompt, seed=1)
    p.setup_prompts()
    p.prompts, p.negative_prompts = p.all_prompts[:1], p.all_negative_prompts[:1]
    p.seeds, p.subseeds = p.all_seeds[:1], p.all_subseeds[:1]
    p.parse_extra_network_prompts()
    layers = [m for m in host.sd_model.network_layer_mapping.values() if hasattr(m, "weight") or
              isinstance(m, torch.nn.MultiheadAttention)]
    _sync()
    start = time.perf_counter()
    extra_networks.activate(p, p.extra_network_data)
    for layer in layers:
        host.networks.network_apply_weights(layer)
    _sync()
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cpu", help="where the model's layers live: cpu or cuda")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16"], help="model and LoRA module dtype")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rank", type=int, default=32, help="rank of each of the two joined parts")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        lora_dir = Path(tmp) / "Lora"
        lora_dir.mkdir()
        t = time.perf_counter()
        joined = make_files(lora_dir, args.rank)
        print(f"joined LoRA: {joined.name}, rank {2 * args.rank}, {joined.stat().st_size / 2**20:.0f} MiB "
              f"(made in {time.perf_counter() - t:.1f} s)")
        # lora_in_memory_limit 2: the built-in path keeps J in memory, so its rounds read nothing either
        host = start_host(lora_dir, family="sd1", rows=spec_rows("sd15_lora"), settings={"lora_in_memory_limit": 2})
        try:
            from modules import devices, sd_models
            devices.dtype = torch.float16 if args.dtype == "fp16" else torch.float32
            devices.device = torch.device(args.device)
            host.sd_model.to(device=devices.device, dtype=devices.dtype)
            n_layers = sum(1 for m in host.sd_model.network_layer_mapping.values() if hasattr(m, "network_current_names")
                           or isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
            print(f"model: {len(spec_rows('sd15_lora'))} SD1.5 LoRA target layers ({n_layers} patchable), "
                  f"torch threads {args.threads}, {args.device}, {args.dtype}")
            reads = []
            original = loading.load_lora
            loading.load_lora = lambda path: (reads.append(path), original(path))[1]
            try:
                apply_cost(host, "x <lora:J:0.9>")        # warm-up: both read the file once
                apply_cost(host, "x <ljl:J:0.9,0.8>")
                host_reads, ljl_reads = len(sd_models.reads), len(reads)
                lora_times, ljl_times = [], []
                for i in range(args.rounds):
                    w = 0.5 + 0.05 * i
                    lora_times.append(apply_cost(host, f"x <lora:J:{w}>"))
                    ljl_times.append(apply_cost(host, f"x <ljl:J:{w},{1 - w / 2}>"))
            finally:
                loading.load_lora = original
            new_host_reads = len(sd_models.reads) - host_reads
            new_ljl_reads = len(reads) - ljl_reads
        finally:
            host.close()

    lora_med, ljl_med = statistics.median(lora_times), statistics.median(ljl_times)
    ratio = ljl_med / lora_med
    print(f"<lora:J:w>  new weight : median {lora_med * 1000:8.1f} ms  ({', '.join(f'{t * 1000:.0f}' for t in lora_times)})")
    print(f"<ljl:J:Σ>   new Σ      : median {ljl_med * 1000:8.1f} ms  ({', '.join(f'{t * 1000:.0f}' for t in ljl_times)})")
    print(f"ratio ljl / lora       : {ratio:.3f}  (target ≤ {TARGET})  {'PASS' if ratio <= TARGET else 'FAIL'}")
    print(f"file reads during the rounds: {new_ljl_reads} for new Σ (runtime), {new_host_reads} for new weights "
          f"(host)  {'PASS' if new_ljl_reads == 0 else 'FAIL'}")
    return 0 if ratio <= TARGET and new_ljl_reads == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
