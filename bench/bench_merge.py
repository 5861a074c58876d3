"""Benchmark the merge core on full-size LoRAs generated from the module specs (two inputs each).

Measured in one run, against baselines measured in the same run:
- svd (factored QR + small SVD) vs a dense baseline that builds every ΔW and calls torch.linalg.svd
  (full_matrices=True, as sd-scripts' svd_merge_lora does), with the mean relative error of both;
- concat (merge + save) vs the I/O floor: safetensors load of the inputs plus save of the output;
  "cold" is a first merge of inputs that declare their sshs_model_hash, as sd-scripts writes it into
  every LoRA it trains (the provenance records that hash, as the WebUI shows it); "unhashed" a first
  merge of the same inputs without it, which hashes them; "warm" a merge of inputs this process has
  read before (hash_memo: the tab merging the same files again);
- peak resident memory of the svd merge in a fresh process vs inputs + output + 1 GiB (and, for
  comparison, that of a concat, which is streamed to its file).

    .venv/bin/python bench/bench_merge.py [--quick] [--dense-all | --no-dense] [--device cuda]

--quick runs only SD1.5 rank 32 (the dense baseline takes minutes on two cores).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from lora_factory import FAMILY_OF_SPEC, make_tensors, write_lora  # noqa: E402
from lora_merge_ext import api, hash_memo  # noqa: E402
from lora_merge_ext.safetensors_io import tensor_data_sha256  # noqa: E402

CONFIGS = [("SD1.5", "sd15_lora", 32), ("SD1.5", "sd15_lora", 128), ("SDXL", "sdxl_lora", 32), ("SDXL", "sdxl_lora", 64)]
GiB = 2 ** 30


def dense_svd_baseline(paths: list[Path], weights: list[float], rank: int) -> tuple[float, float]:
    """Build every ΔW densely, SVD it with full matrices, truncate; returns (seconds, mean relative error)."""
    start = time.perf_counter()
    sds = [load_file(str(p)) for p in paths]
    names = sorted({k.split(".")[0] for sd in sds for k in sd})
    errors = []
    for name in names:
        delta = None
        for sd, w in zip(sds, weights):
            if f"{name}.lora_down.weight" not in sd:
                continue
            down = sd[f"{name}.lora_down.weight"].float()
            up = sd[f"{name}.lora_up.weight"].float()
            r = down.shape[0]
            alpha = float(sd[f"{name}.alpha"]) if f"{name}.alpha" in sd else r
            d = w * (alpha / r) * (up.reshape(up.shape[0], r) @ down.reshape(r, -1))
            delta = d if delta is None else delta + d
        u, s, vh = torch.linalg.svd(delta)  # full_matrices=True, as the dense tools do
        approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
        errors.append(float((approx - delta).norm() / delta.norm()))
    return time.perf_counter() - start, sum(errors) / len(errors)


def input_pair(tmp: Path, spec: str, rank: int) -> tuple[list[Path], list[Path]]:
    """Two fp16 LoRAs as sd-scripts writes them (with sshs_model_hash), and the same two without it."""
    declared, plain = [], []
    for k in (1, 2):
        tensors = make_tensors(spec, rank=rank, alpha=rank / 2, seed=k, dtype=torch.float16)
        plain.append(write_lora(tmp / f"{spec}_{rank}_{k}_unhashed.safetensors", tensors, FAMILY_OF_SPEC[spec]))
        declared.append(write_lora(tmp / f"{spec}_{rank}_{k}.safetensors", tensors, FAMILY_OF_SPEC[spec],
                                   {"sshs_model_hash": tensor_data_sha256(plain[-1])}))
    hash_memo.forget_all()
    return declared, plain


REPEATS = 5  # concat and the floor are timed this many times each, alternating; the best of each counts


def io_floor(paths: list[Path], output: Path, k: int) -> float:
    """safetensors load of the inputs plus save of the output (the tensors of a finished concat) to a new file."""
    result = load_file(str(output))
    target = output.with_suffix(f".floor{k}.safetensors")
    settle()
    start = time.perf_counter()
    for p in paths:
        load_file(str(p))
    save_file(result, str(target))
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def timed_merge(paths, out: Path, mode: str, rank: int | None, device: str, remove: bool = False
                ) -> tuple[float, object]:
    """What `merge … --dtype fp16 -o out` does (api.merge_to_file); returns (seconds, report).
    remove: delete the output afterwards."""
    settle()
    start = time.perf_counter()
    _saved, report = api.merge_to_file(paths, out, mode=mode, weights=[1.0, -0.5], rank=rank, device=device,
                                       dtype="fp16")
    seconds = time.perf_counter() - start
    if remove:
        out.unlink()
    return seconds, report


def settle() -> None:
    """Flush the files written so far to disk, so that no timed run is slowed down by the kernel
    writing back (or throttling) what the runs before it wrote."""
    os.sync()


def peak_rss(paths: list[Path], out: Path, mode: str, rank: int | None, device: str) -> int:
    """Peak resident memory of a merge_to_file in a fresh process.  Read from VmHWM, the high-water
    mark of the process's own memory: getrusage's ru_maxrss would also count this (large) parent,
    whose high-water mark a child inherits when it is started with fork/vfork and exec."""
    code = ("import re; from lora_merge_ext import api; "
            f"api.merge_to_file({[str(p) for p in paths]!r}, {str(out)!r}, mode={mode!r}, rank={rank!r}, "
            f"device={device!r}, dtype='fp16', overwrite=True); "
            "print(re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read()).group(1))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(done.stdout.strip().splitlines()[-1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dense-all", action="store_true", help="run the dense baseline on every config")
    parser.add_argument("--no-dense", action="store_true", help="skip the dense baseline (minutes on two cores)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    configs = CONFIGS[:1] if args.quick else CONFIGS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for family, spec, rank in configs:
            paths, unhashed = input_pair(tmp, spec, rank)
            in_size = sum(p.stat().st_size for p in paths)
            time.sleep(hash_memo.SETTLED_NS / 1e9)  # files written just now are never remembered
            row = {"config": f"{family} r{rank}", "inputs_MiB": in_size / 2 ** 20}
            t_cold, t_unhashed, t_warm, t_floor = [], [], [], []
            kept = tmp / f"{spec}_{rank}_concat.safetensors"  # the floor saves these tensors
            timed_merge(paths, kept, "concat", None, args.device)
            for k in range(REPEATS):
                hash_memo.forget_all()
                t_cold.append(timed_merge(paths, tmp / f"{spec}_{rank}_cold{k}.safetensors", "concat", None,
                                          args.device, remove=True)[0])
                t_floor.append(io_floor(paths, kept, k))
                t_warm.append(timed_merge(paths, tmp / f"{spec}_{rank}_warm{k}.safetensors", "concat", None,
                                          args.device, remove=True)[0])
                hash_memo.forget_all()
                t_unhashed.append(timed_merge(unhashed, tmp / f"{spec}_{rank}_unhashed{k}.safetensors", "concat",
                                              None, args.device, remove=True)[0])
            t_cold, t_unhashed, t_warm, t_floor = min(t_cold), min(t_unhashed), min(t_warm), min(t_floor)
            row.update(concat_s=t_cold, unhashed_s=t_unhashed, warm_s=t_warm, io_floor_s=t_floor,
                       concat_vs_io=t_cold / t_floor, unhashed_vs_io=t_unhashed / t_floor, warm_vs_io=t_warm / t_floor)
            for p in unhashed:
                p.unlink()
            t_svd, report = timed_merge(paths, tmp / f"{spec}_{rank}_svd.safetensors", "svd", rank, args.device)
            row.update(svd_s=t_svd, svd_error=report.summary()["mean_error"])
            if not args.no_dense and (args.dense_all or (family, rank) == ("SD1.5", 32)):
                t_dense, dense_err = dense_svd_baseline(paths, [1.0, -0.5], rank)
                row.update(dense_s=t_dense, dense_error=dense_err, speedup=t_dense / t_svd)
            peak = peak_rss(paths, tmp / f"{spec}_{rank}_svd_mem.safetensors", "svd", rank, args.device)
            row.update(concat_peak_GiB=peak_rss(paths, tmp / f"{spec}_{rank}_concat_mem.safetensors", "concat", None,
                                                args.device) / GiB)
            out_size = (tmp / f"{spec}_{rank}_svd_mem.safetensors").stat().st_size
            row.update(peak_GiB=peak / GiB, budget_GiB=(in_size + out_size + GiB) / GiB)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    head = ("config", "inputs", "concat cold", "unhashed", "concat warm", "I/O floor", "cold/IO", "unhashed/IO",
            "warm/IO", "svd", "dense svd",
            "speedup",
            "err svd", "err dense", "svd peak RSS", "budget", "concat peak RSS")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for r in rows:
        cells = [r["config"], f"{r['inputs_MiB']:.0f} MiB", f"{r['concat_s']:.2f} s", f"{r['unhashed_s']:.2f} s",
                 f"{r['warm_s']:.2f} s", f"{r['io_floor_s']:.2f} s", f"{r['concat_vs_io']:.2f}×",
                 f"{r['unhashed_vs_io']:.2f}×", f"{r['warm_vs_io']:.2f}×", f"{r['svd_s']:.2f} s",
                 f"{r['dense_s']:.1f} s" if "dense_s" in r else "—",
                 f"{r['speedup']:.0f}×" if "speedup" in r else "—",
                 f"{r['svd_error']:.4f}", f"{r['dense_error']:.4f}" if "dense_error" in r else "—",
                 f"{r['peak_GiB']:.2f} GiB", f"{r['budget_GiB']:.2f} GiB", f"{r['concat_peak_GiB']:.2f} GiB"]
        print(" | ".join(cells))


if __name__ == "__main__":
    main()
