"""The WebUI v1.10.1 installs torch 2.1.2 (A1111_HOST_API.md): the extension must not use what
later torch releases added.  tests/data/torch_2_1_2_names.json lists the names torch 2.1.2 has (read
from an installed 2.1.2); every torch name the code uses must be among them.  (What a name supports
can differ too: aminmax of fp16 on the CPU came with 2.2, see finite_check.)"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
KNOWN = json.loads((ROOT / "tests" / "data" / "torch_2_1_2_names.json").read_text())["names"]
MODULES = {"torch": "torch", "torch.linalg": "torch.linalg", "torch.nn": "torch.nn",
           "torch.nn.functional": "torch.nn.functional", "F": "torch.nn.functional"}


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _sources():
    return sorted([*(ROOT / "lora_merge_ext").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])


def test_the_code_uses_only_names_torch_2_1_2_has():
    newer_tensor_methods = ({n for n in dir(torch.Tensor) if not n.startswith("_")} - set(KNOWN["torch.Tensor"])
                            - {"index"})  # also list.index and str.index, which the code uses
    missing = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute):
                continue
            base = _dotted(node.value)
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if base in MODULES and node.attr not in KNOWN[MODULES[base]] and not node.attr.startswith("_"):
                missing.append(f"{where}: {base}.{node.attr}")
            elif node.attr in newer_tensor_methods:
                missing.append(f"{where}: .{node.attr} (a tensor method added after torch 2.1.2)")
    assert not missing, missing


def test_the_check_sees_a_name_added_after_2_1_2():
    """The list really is 2.1.2's: names added later are absent from it."""
    assert "aminmax" in KNOWN["torch"] and "float8_e4m3fn" in KNOWN["torch"]
    assert "uint16" not in KNOWN["torch"] and "uint64" not in KNOWN["torch"]
