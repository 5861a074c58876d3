"""The join layout read from a file's metadata: malformed layouts are one-line errors, never a crash
or a Σ slice that spills into the next component."""
import json

import pytest
import torch

from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.layout import METADATA_KEY, JoinLayout, layout_of
from lora_merge_ext.lora_file import LoraFile, LoraModule
from lora_merge_ext.realize import realize_lora


def lora_with(layout_json: str, ranks: dict) -> LoraFile:
    modules = {n: LoraModule(n, torch.ones(r, 3), torch.ones(5, r), None) for n, r in ranks.items()}
    return LoraFile(modules, {METADATA_KEY: layout_json}, "sd1", "j.safetensors")


ABSENT = object()


def layout_text(components, module_ranks=ABSENT):
    data = {"version": 1, "components": [{"name": n, "rank": r} for n, r in components]}
    if module_ranks is not ABSENT:
        data["module_ranks"] = module_ranks
    return json.dumps(data)


def test_a_round_trip_keeps_the_layout():
    layout = JoinLayout.join([(JoinLayout.single("a", {"m": 4, "n": 2}), {"m", "n"}),
                              (JoinLayout.single("b", {"m": 2}), {"m"})])
    again = JoinLayout.from_metadata(layout.to_metadata())
    assert again == layout
    assert again.module_vector("n", [1, 2, 3, 4, 5, 6]) == [1, 2]


@pytest.mark.parametrize("row", [[3, 1], [1, 3]])
def test_a_module_rank_above_its_component_rank_is_refused(row):
    """Each component owns `rank` entries of a per-rank Σ vector; a module that claims more would
    read the next component's entries (or run off the end and crash later)."""
    lora = lora_with(layout_text([("a", 2), ("b", 2)], {"m": row}), {"m": 4})
    with pytest.raises(LoraMergeError, match="j.safetensors: .*ljl_layout"):
        layout_of(lora)


@pytest.mark.parametrize("module_ranks", [[], None, "m", [[1, 1]]])
def test_module_ranks_that_are_not_a_mapping_are_refused(module_ranks):
    lora = lora_with(layout_text([("a", 1), ("b", 1)], module_ranks), {"m": 2})
    with pytest.raises(LoraMergeError, match="j.safetensors: metadata 'ljl_layout' is not a valid join layout"):
        layout_of(lora)


def test_a_valid_uneven_layout_still_realizes():
    lora = lora_with(layout_text([("a", 2), ("b", 2)], {"m": [1, 2]}), {"m": 3, "n": 4})
    layout = layout_of(lora)
    assert layout.module_vector("m", [1, 2, 3, 4]) == [1, 3, 4]
    out = realize_lora(lora, layout, [1.0, 0.0, 2.0, 0.0])
    assert out.modules["m"].rank == 2 and out.modules["n"].rank == 2
