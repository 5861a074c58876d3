"""The preset file: format, problems, the shipped preset.txt."""
import pytest

from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.lbw import parse_lbw
from lora_merge_ext.lbw_blocks import FORMS
from lora_merge_ext.presets import DEFAULT_PATH, load_presets, parse_presets, preset_names

ONES17, ONES12, ONES26, ONES20 = (",".join(["1"] * n) for n in (17, 12, 26, 20))

# LORA_BLOCK_WEIGHT.md §4c, the defaults of sd-webui-lora-block-weight (17-form)
LBW_DEFAULTS = {
    "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
    "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
    "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
    "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
    "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
    "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
    "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
    "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
}


def test_format():
    text = f"""# comment
   # indented comment

ALL:{ONES17}
ALL: {ONES12}
  MINE : X,{",".join(["0.5"] * 19)}
"""
    presets = parse_presets(text)
    assert presets == {"ALL": [ONES17, ONES12], "MINE": ["X," + ",".join(["0.5"] * 19)]}
    assert presets.problems == []
    assert preset_names(presets) == ["ALL", "MINE"]
    assert preset_names(presets, "sd1") == ["ALL"]
    assert preset_names(presets, "sdxl") == ["ALL", "MINE"]


@pytest.mark.parametrize("line, words", [
    ("no colon here", ["line 2", "expected NAME:v1,v2"]),
    (":" + ONES17, ["line 2", "'' is not a usable preset name"]),
    ("A B:" + ONES17, ["'A B' is not a usable preset name"]),
    ("A,B:" + ONES17, ["not a usable preset name"]),
    ("A=B:" + ONES17, ["not a usable preset name"]),
    ("SHORT:1,1,1", ["line 2", "preset 'SHORT' has 3 values; expected 12, 17, 20 or 26"]),
    ("FLUX:" + ",".join(["1"] * 61), ["has 61 values"]),
    ("BAD:" + ONES12[:-1] + "z", ["line 2", "preset 'BAD'", "'z' is not a number"]),
    ("RAND:R," + ONES17[2:], ["random weights"]),
    ("EMPTY:", ["line 2", "empty entry"]),
    ("TRAIL:" + ONES12 + ",", ["empty entry"]),
    ("HASH:" + ONES12 + " # note", ["is not a number"]),
])
def test_bad_lines_are_reported_and_skipped(line, words):
    presets = parse_presets(f"ALL:{ONES17}\n{line}\nOK:{ONES20}")
    assert presets == {"ALL": [ONES17], "OK": [ONES20]}
    assert len(presets.problems) == 1
    for w in words:
        assert w in presets.problems[0]


def test_a_form_skipped_for_a_bad_line_is_named_when_that_family_asks_for_it():
    presets = parse_presets(f"FOO:{ONES17}\nFOO:{ONES12[:-1]}zz")
    assert presets == {"FOO": [ONES17]}
    with pytest.raises(LoraMergeError) as info:
        parse_lbw("FOO", "sdxl", presets)
    message = str(info.value)
    assert "has no SDXL form" in message and "line 2" in message and "'zz' is not a number" in message


def test_a_later_line_for_the_same_family_wins_as_in_lora_block_weight():
    """lora-block-weight reads its preset file into a dict, line by line: a user's line pasted below
    the shipped ones replaces them."""
    presets = parse_presets(f"P:{ONES12}\nP:{ONES20}\nP:{ONES26}\nP:{ONES17}")
    assert presets["P"] == [ONES20, ONES17] and presets.problems == []
    mine = parse_presets("MINE:" + ",".join(["1"] * 17) + "\nMINE:" + ",".join(["0"] * 8 + ["1"] * 9))
    assert parse_lbw("MINE", "sd1", mine)["IN01"] == 0.0


def test_load_presets_from_path(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(f"ALL:{ONES12}\n\xff\xfe:1\n".encode("latin-1"))
    presets = load_presets(path)
    assert presets == {"ALL": [ONES12]}
    assert len(presets.problems) == 1 and presets.problems[0].startswith("line 2:")


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes(f"MINE:{ONES17}\r\nALL:{ONES12}\r\n".encode("utf-8-sig"))
    presets = load_presets(path)
    assert presets == {"MINE": [ONES17], "ALL": [ONES12]} and presets.problems == []


def test_missing_file(tmp_path):
    with pytest.raises(LoraMergeError, match="cannot read the preset file"):
        load_presets(tmp_path / "nope.txt")


def test_unknown_family_in_names():
    with pytest.raises(LoraMergeError, match="unknown model family"):
        preset_names({}, "sd3")


# ---- the shipped preset.txt ----

def test_shipped_file_is_clean():
    assert DEFAULT_PATH.name == "preset.txt" and DEFAULT_PATH.is_file()
    presets = load_presets()
    assert presets.problems == []
    assert DEFAULT_PATH.read_text().startswith("#")


def test_shipped_lbw_defaults():
    presets = load_presets()
    for name, values in LBW_DEFAULTS.items():
        assert presets[name][0] == values, name


def test_all_exists_for_every_family():
    presets = load_presets()
    for family, form in [("sd1", 17), ("sd2", 17), ("sdxl", 12)]:
        assert "ALL" in preset_names(presets, family)
        assert parse_lbw("ALL", family) == {b: (1.0 if b in FORMS[form] else 0.0) for b in parse_lbw("ALL", family)}


def test_sdxl_forms_have_the_same_meaning():
    presets = load_presets()
    assert preset_names(presets, "sdxl") == list(LBW_DEFAULTS)
    expected_on = {
        "NONE": set(), "ALL": set(FORMS[12]),
        "INS": {"BASE", "IN04", "IN05"}, "IND": {"BASE", "IN07", "IN08"},
        "INALL": {"BASE", "IN04", "IN05", "IN07", "IN08"},
        "MIDD": {"BASE", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02"},
        "OUTD": {"BASE", "OUT00", "OUT01", "OUT02"}, "OUTS": {"BASE", "OUT03", "OUT04", "OUT05"},
        "OUTALL": {"BASE", "OUT00", "OUT01", "OUT02", "OUT03", "OUT04", "OUT05"},
    }
    for name, on in expected_on.items():
        weights = parse_lbw(name, "sdxl")
        assert {b for b, v in weights.items() if v == 1.0} == on, name
        assert all(v == 0.0 for b, v in weights.items() if b not in on), name
    assert set(parse_lbw("ALL0.5", "sdxl").values()) == {0.0, 0.5}


def test_an_edited_preset_file_is_read_again(tmp_path):
    """Readers call load_presets at each use: an edit (even one of the same length) applies without a
    restart, and an unchanged file is not parsed again."""
    import os
    path = tmp_path / "p.txt"
    path.write_text(f"MINE:{ONES17}\n")
    first = load_presets(path)
    assert load_presets(path) is first
    path.write_text(f"MINE:{ONES17.replace('1', '0', 1)}\n")
    st = path.stat()  # same size; a later mtime even where the clock is coarse
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    edited = load_presets(path)
    assert edited["MINE"] == ["0" + ONES17[1:]] and first["MINE"] == [ONES17]
