"""Check the CUDA path of the merge core where a GPU exists: svd and concat on cuda equal cpu."""
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from lora_factory import make_lora  # noqa: E402
from lora_merge_ext import api  # noqa: E402


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA GPU here; nothing to check")
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = [make_lora(Path(tmp) / f"{k}.safetensors", "sdxl_lora", rank=32, seed=k, dtype=torch.float16)
                 for k in (1, 2)]
        for mode in ("concat", "svd"):
            results = {}
            for device in ("cpu", "cuda"):
                start = time.perf_counter()
                rank = {"rank": 32} if mode == "svd" else {}
                results[device] = api.merge(paths, mode=mode, **rank, weights=[1, -0.5], device=device, report=True)
                print(f"{mode:6} {device:4} {time.perf_counter() - start:6.2f} s  "
                      f"mean error {results[device].report.summary()['mean_error']:.3g}")
            worst = max(float((results["cpu"].lora.modules[n].delta() - m.delta()).norm() / m.delta().norm())
                        for n, m in results["cuda"].lora.modules.items())
            print(f"{mode}: largest relative difference of ΔW between cpu and cuda: {worst:.2e}")
            assert worst < 1e-4


if __name__ == "__main__":
    main()
