"""Reading the double's /sdapi/v1/txt2img images back (see modules/api/api.py)."""
import base64

import safetensors.torch


def decode_images(encoded: list[str]) -> list[dict]:
    out = []
    for text in encoded:
        tensors = safetensors.torch.load(base64.b64decode(text))
        out.append({tuple(k.split("/", 1)): v for k, v in tensors.items()})
    return out
