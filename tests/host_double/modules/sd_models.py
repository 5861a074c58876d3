"""``modules.sd_models``: reading model/LoRA files.  ``reads`` lists every tensor read (tests count them)."""
import json

import safetensors.torch
import torch

from modules import shared

reads = []


def read_metadata_from_safetensors(filename):
    with open(filename, mode="rb") as file:
        metadata_len = int.from_bytes(file.read(8), "little")
        json_start = file.read(2)
        assert metadata_len > 2 and json_start in (b'{"', b"{'"), f"{filename} is not a safetensors file"
        json_data = json_start + file.read(metadata_len - 2)
        json_obj = json.loads(json_data)
        res = {}
        for k, v in json_obj.get("__metadata__", {}).items():
            res[k] = v
            if isinstance(v, str) and v[0:1] == "{":
                try:
                    res[k] = json.loads(v)
                except Exception:
                    pass
        return res


def read_state_dict(checkpoint_file, print_global_state=False, map_location=None):
    reads.append(checkpoint_file)
    if str(checkpoint_file).lower().endswith(".safetensors"):
        device = map_location or shared.weight_load_location or "cpu"
        return safetensors.torch.load_file(checkpoint_file, device=device)
    return torch.load(checkpoint_file, map_location=map_location or "cpu", weights_only=True)
