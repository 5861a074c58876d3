"""``modules.sd_models`` of the double: reading LoRA / checkpoint files.

* ``read_metadata_from_safetensors(filename)``: the header's ``__metadata__`` as a dict; a string
  value that starts with ``{`` is decoded as JSON when it is valid JSON (reference §12.7);
* ``read_state_dict(checkpoint_file, print_global_state=False, map_location=None)``: every tensor of
  the file, on ``map_location``, else ``shared.weight_load_location``, else the CPU (§2.4).  Each call
  is listed in ``reads`` (tests check that the extension's runtime does not make the host read files).
"""
import json

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from modules import shared

reads = []


def _decoded(value):
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def read_metadata_from_safetensors(filename) -> dict:
    with safe_open(str(filename), framework="pt") as handle:
        header = handle.metadata() or {}
    return {key: _decoded(value) for key, value in header.items()}


def read_state_dict(checkpoint_file, print_global_state=False, map_location=None) -> dict:
    reads.append(checkpoint_file)
    where = map_location or shared.weight_load_location or "cpu"
    if str(checkpoint_file).lower().endswith(".safetensors"):
        return load_file(str(checkpoint_file), device=str(where))
    return torch.load(checkpoint_file, map_location=where, weights_only=True)
