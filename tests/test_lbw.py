"""lbw: block tables, module name → block, lbw strings and factors."""
import json
from collections import Counter
from pathlib import Path

import pytest

from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.lbw import lbw_factor, parse_lbw
from lora_merge_ext.lbw_blocks import BLOCK_IDS, FAMILY_LENGTHS, FORMS, block_of
from lora_merge_ext.presets import parse_presets

SPECS = Path(__file__).parent / "data" / "module_specs"
PRESETS = parse_presets("ALL:" + ",".join(["1"] * 17) + "\nALL:" + ",".join(["1"] * 12)
                        + "\nHALF:" + ",".join(["X"] * 17) + "\nSDONLY:" + ",".join(["0"] * 26))


def spec_names(spec):
    return [row[0] for row in json.loads((SPECS / f"{spec}.json").read_text())]


# ---- block tables (LORA_BLOCK_WEIGHT.md §1) ----

def test_block_ids():
    assert len(BLOCK_IDS) == 26
    assert BLOCK_IDS[:3] == ("BASE", "IN00", "IN01")
    assert BLOCK_IDS[12:15] == ("IN11", "M00", "OUT00")
    assert BLOCK_IDS[-1] == "OUT11"


def test_forms():
    assert {n: len(ids) for n, ids in FORMS.items()} == {17: 17, 26: 26, 12: 12, 20: 20}
    assert ",".join(FORMS[17]) == "BASE,IN01,IN02,IN04,IN05,IN07,IN08,M00,OUT03,OUT04,OUT05,OUT06,OUT07,OUT08,OUT09,OUT10,OUT11"
    assert ",".join(FORMS[12]) == "BASE,IN04,IN05,IN07,IN08,M00,OUT00,OUT01,OUT02,OUT03,OUT04,OUT05"
    assert ",".join(FORMS[20]) == ("BASE,IN00,IN01,IN02,IN03,IN04,IN05,IN06,IN07,IN08,M00,"
                                   "OUT00,OUT01,OUT02,OUT03,OUT04,OUT05,OUT06,OUT07,OUT08")
    assert set(BLOCK_IDS) - set(FORMS[17]) == {"IN00", "IN03", "IN06", "IN09", "IN10", "IN11", "OUT00", "OUT01", "OUT02"}
    assert FAMILY_LENGTHS == {"sd1": (17, 26), "sd2": (17, 26), "sdxl": (12, 20)}


# ---- module → block (§2b) ----

@pytest.mark.parametrize("module, block", [
    # worked examples of §2b
    ("lora_unet_down_blocks_0_attentions_0_proj_in", "IN01"),
    ("lora_unet_down_blocks_0_resnets_1_conv2", "IN02"),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", "IN03"),
    ("lora_unet_down_blocks_3_resnets_1_conv1", "IN11"),
    ("lora_unet_up_blocks_0_resnets_2_conv1", "OUT02"),
    ("lora_unet_up_blocks_0_upsamplers_0_conv", "OUT02"),
    ("lora_unet_up_blocks_1_attentions_0_proj_out", "OUT03"),
    ("lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_q", "OUT11"),
    ("lora_unet_up_blocks_2_upsamplers_0_conv", "OUT08"),
    ("lora_unet_mid_block_attentions_0_proj_in", "M00"),
    ("lora_unet_mid_block_resnets_1_conv2", "M00"),
    ("lora_unet_conv_in", "IN00"),
    # text encoders
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "BASE"),
    ("lora_te1_text_model_encoder_layers_11_mlp_fc1", "BASE"),
    ("lora_te2_text_model_encoder_layers_31_mlp_fc2", "BASE"),
    # SGM names, trailing-underscore rule
    ("lora_unet_input_blocks_0_0", "IN00"),
    ("lora_unet_input_blocks_1_0_in_layers_2", "IN01"),
    ("lora_unet_input_blocks_10_0_out_layers_3", "IN10"),
    ("lora_unet_input_blocks_11_0_emb_layers_1", "IN11"),
    ("lora_unet_middle_block_0_in_layers_2", "M00"),
    ("lora_unet_middle_block_2_emb_layers_1", "M00"),
    ("lora_unet_output_blocks_1_1_proj_in", "OUT01"),
    ("lora_unet_output_blocks_11_1_proj_out", "OUT11"),
    ("lora_unet_output_blocks_2_2_conv", "OUT02"),
    # tensor suffixes are ignored
    ("lora_unet_output_blocks_5_2_conv.lora_up.weight", "OUT05"),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha", "BASE"),
    # outside every block
    ("lora_unet_time_embedding_linear_1", None),
    ("lora_unet_conv_out", None),
    ("lora_unet_conv_norm_out", None),
    ("lora_unet_time_embed_0", None),
    ("lora_unet_label_emb_0_0", None),
    ("lora_unet_out_2", None),
    ("lora_unet_input_blocks_12_0_op", None),
    ("lora_unet_down_blocks_4_resnets_0_conv1", None),
    ("lora_unet_input_blocks_x_0", None),
    ("lora_unet_input_blocks_", None),
    ("lora_unet_input_blocks_1000_0", None),
    ("lora_unet_mid_block", None),
    ("lora_unet_conv_input", None),
    ("lora_te3_text_model_encoder_layers_0_mlp_fc1", None),
    ("unet_input_blocks_1_0", None),
    ("", None),
    ("lora_unet_input_blocks_١_0", None),
])
def test_block_of(module, block):
    assert block_of(module) == block


# Written out by hand from the §2b table (not from the arithmetic): diffusers prefix → block.
SD1_BLOCKS = {
    "down_blocks_0_attentions_0": "IN01", "down_blocks_0_resnets_0": "IN01",
    "down_blocks_0_attentions_1": "IN02", "down_blocks_0_resnets_1": "IN02", "down_blocks_0_downsamplers_0": "IN03",
    "down_blocks_1_attentions_0": "IN04", "down_blocks_1_resnets_0": "IN04",
    "down_blocks_1_attentions_1": "IN05", "down_blocks_1_resnets_1": "IN05", "down_blocks_1_downsamplers_0": "IN06",
    "down_blocks_2_attentions_0": "IN07", "down_blocks_2_resnets_0": "IN07",
    "down_blocks_2_attentions_1": "IN08", "down_blocks_2_resnets_1": "IN08", "down_blocks_2_downsamplers_0": "IN09",
    "down_blocks_3_resnets_0": "IN10", "down_blocks_3_resnets_1": "IN11",
    "mid_block_attentions_0": "M00", "mid_block_resnets_0": "M00", "mid_block_resnets_1": "M00",
    "up_blocks_0_resnets_0": "OUT00", "up_blocks_0_resnets_1": "OUT01", "up_blocks_0_resnets_2": "OUT02",
    "up_blocks_0_upsamplers_0": "OUT02",
    "up_blocks_1_attentions_0": "OUT03", "up_blocks_1_resnets_0": "OUT03",
    "up_blocks_1_attentions_1": "OUT04", "up_blocks_1_resnets_1": "OUT04",
    "up_blocks_1_attentions_2": "OUT05", "up_blocks_1_resnets_2": "OUT05", "up_blocks_1_upsamplers_0": "OUT05",
    "up_blocks_2_attentions_0": "OUT06", "up_blocks_2_resnets_0": "OUT06",
    "up_blocks_2_attentions_1": "OUT07", "up_blocks_2_resnets_1": "OUT07",
    "up_blocks_2_attentions_2": "OUT08", "up_blocks_2_resnets_2": "OUT08", "up_blocks_2_upsamplers_0": "OUT08",
    "up_blocks_3_attentions_0": "OUT09", "up_blocks_3_resnets_0": "OUT09",
    "up_blocks_3_attentions_1": "OUT10", "up_blocks_3_resnets_1": "OUT10",
    "up_blocks_3_attentions_2": "OUT11", "up_blocks_3_resnets_2": "OUT11",
}


def expected_block(name):
    if name.startswith(("lora_te_", "lora_te1_", "lora_te2_")):
        return "BASE"
    rest = name[len("lora_unet_"):]
    parts = rest.split("_")
    if parts[:2] == ["input", "blocks"]:
        return "IN" + parts[2].zfill(2)
    if parts[:2] == ["output", "blocks"]:
        return "OUT" + parts[2].zfill(2)
    if parts[:2] == ["middle", "block"]:
        return "M00"
    hits = [b for p, b in SD1_BLOCKS.items() if rest.startswith(p + "_")]
    assert len(hits) == 1, name
    return hits[0]


# Per-block module counts, counted by hand from the spec files' structure.
ATTN = 12  # proj_in, proj_out and 10 linears of one SD1 transformer block
SD15_LORA = {"BASE": 72, **{b: ATTN for b in FORMS[17][1:]}}
SD15_LOCON = {"BASE": 72, "IN01": 15, "IN02": 15, "IN03": 1, "IN04": 16, "IN05": 15, "IN06": 1, "IN07": 16,
              "IN08": 15, "IN09": 1, "IN10": 3, "IN11": 3, "M00": 18, "OUT00": 4, "OUT01": 4, "OUT02": 5,
              "OUT03": 16, "OUT04": 16, "OUT05": 17, "OUT06": 16, "OUT07": 16, "OUT08": 17, "OUT09": 16,
              "OUT10": 16, "OUT11": 16}
SDXL_LORA = {"BASE": 72 + 192, "IN04": 22, "IN05": 22, "IN07": 102, "IN08": 102, "M00": 102,
             "OUT00": 102, "OUT01": 102, "OUT02": 102, "OUT03": 22, "OUT04": 22, "OUT05": 22}
SDXL_LOCON = {"BASE": 264, "IN01": 3, "IN02": 3, "IN03": 1, "IN04": 26, "IN05": 25, "IN06": 1, "IN07": 106,
              "IN08": 105, "M00": 108, "OUT00": 106, "OUT01": 106, "OUT02": 107, "OUT03": 26, "OUT04": 26,
              "OUT05": 27, "OUT06": 4, "OUT07": 4, "OUT08": 4}


@pytest.mark.parametrize("spec, counts", [("sd15_lora", SD15_LORA), ("sd15_locon", SD15_LOCON),
                                          ("sdxl_lora", SDXL_LORA), ("sdxl_locon", SDXL_LOCON)])
def test_every_spec_module(spec, counts):
    names = spec_names(spec)
    assert sum(counts.values()) == len(names)
    for name in names:
        assert block_of(name) == expected_block(name), name
    assert Counter(block_of(n) for n in names) == counts


def test_standard_lora_uses_only_the_short_form_blocks():
    assert {block_of(n) for n in spec_names("sd15_lora")} == set(FORMS[17])
    assert {block_of(n) for n in spec_names("sdxl_lora")} == set(FORMS[12])
    assert {block_of(n) for n in spec_names("sdxl_locon")} <= set(FORMS[20])


# ---- lbw strings ----

def slots(**named):
    out = dict.fromkeys(BLOCK_IDS, 0.0)
    out.update(named)
    return out


def test_no_spec():
    assert parse_lbw(None, "sd1") is None
    assert parse_lbw("", "sdxl") is None
    assert parse_lbw("   ", "sd2") is None


def test_17_values():
    values = [round(0.1 * i, 1) for i in range(17)]
    got = parse_lbw(",".join(map(str, values)), "sd1", PRESETS)
    assert got == slots(**dict(zip(FORMS[17], values)))
    assert got["IN00"] == got["IN03"] == got["OUT02"] == 0.0
    assert got["IN01"] == 0.1 and got["M00"] == 0.7 and got["OUT03"] == 0.8 and got["OUT11"] == 1.6


def test_26_values():
    values = list(range(26))
    got = parse_lbw(",".join(map(str, values)), "sd2", PRESETS)
    assert list(got) == list(BLOCK_IDS)
    assert list(got.values()) == [float(v) for v in values]


def test_12_values():
    got = parse_lbw("1, 0,0,0.5,0.5, -1, 2,2,2, 3,3,3", "sdxl", PRESETS)
    assert got == slots(BASE=1, IN07=0.5, IN08=0.5, M00=-1, OUT00=2, OUT01=2, OUT02=2, OUT03=3, OUT04=3, OUT05=3)


def test_20_values():
    values = [float(i) for i in range(1, 21)]
    got = parse_lbw(",".join(map(str, values)), "sdxl", PRESETS)
    assert got == slots(**dict(zip(FORMS[20], values)))
    assert got["M00"] == 11.0 and got["IN09"] == 0.0 and got["OUT08"] == 20.0 and got["OUT09"] == 0.0


def test_x_tokens():
    text = "X,X+0.5,X-1,x, X + 2 ,1" + ",0" * 11
    got = parse_lbw(text, "sd1", PRESETS, x=0.25)
    assert [got[b] for b in FORMS[17][:6]] == [0.25, 0.75, -0.75, 0.25, 2.25, 1.0]
    assert parse_lbw(text, "sd1", PRESETS)["IN01"] == 1.5       # x defaults to 1


def test_presets_pick_the_family_form():
    assert parse_lbw("ALL", "sd1", PRESETS) == slots(**dict.fromkeys(FORMS[17], 1.0))
    assert parse_lbw("ALL", "sdxl", PRESETS) == slots(**dict.fromkeys(FORMS[12], 1.0))
    assert parse_lbw(" ALL ", "sd2", PRESETS)["OUT00"] == 0.0
    assert parse_lbw("HALF", "sd1", PRESETS, x=0.5)["M00"] == 0.5
    assert parse_lbw("SDONLY", "sd1", PRESETS) == slots()


def test_default_preset_file_is_used():
    assert parse_lbw("MIDD", "sd1") == slots(BASE=1, IN05=1, IN07=1, IN08=1, M00=1,
                                             OUT03=1, OUT04=1, OUT05=1, OUT06=1)


@pytest.mark.parametrize("spec, family, pattern", [
    ("1,2,3", "sd1", r"^lbw '1,2,3' has 3 values; SD1 needs 17 or 26 \(or a preset name\)$"),
    (",".join(["1"] * 17), "sdxl", r"has 17 values; SDXL needs 12 or 20"),
    (",".join(["1"] * 12), "sd2", r"has 12 values; SD2 needs 17 or 26"),
    (",".join(["1"] * 61), "sd1", r"has 61 values"),
    ("1", "sd1", r"^lbw '1' has 1 value; SD1 needs 17 or 26"),
    ("FOO", "sd1", r"^unknown lbw preset 'FOO'; known SD1 presets: ALL, HALF, SDONLY \(or give 17 or 26 numbers\)$"),
    ("all", "sdxl", r"unknown lbw preset 'all'; known SDXL presets: ALL \("),
    ("SDONLY", "sdxl", r"^preset 'SDONLY' has no SDXL form \(it has 26 values; SDXL needs 12 or 20\)$"),
    ("R", "sd1", r"unknown lbw preset 'R'"),
    (",".join(["1"] * 16 + ["R"]), "sd1", r"random weights \('R'\) are not supported.*reproducible"),
    (",".join(["U"] + ["1"] * 11), "sdxl", r"random weights \('U'\)"),
    (",".join(["1"] * 16 + ["a"]), "sd1", r"'a' is not a number"),
    (",".join(["1"] * 16 + [""]), "sd1", r"empty entry"),
    (",".join(["1"] * 16 + ["nan"]), "sd1", r"'nan' is not a number"),
    (",".join(["1"] * 16 + ["X+"]), "sd1", r"'X\+' needs a number after the sign"),
    (",".join(["1"] * 16 + ["X*2"]), "sd1", r"'X\*2' is not a number"),
    (",".join(["1"] * 16 + ["1*2"]), "sd1", r"'1\*2' is not a number"),
    ("ALL", "flux", r"unknown model family 'flux'; expected one of sd1, sd2, sdxl"),
])
def test_bad_specs(spec, family, pattern):
    with pytest.raises(LoraMergeError, match=pattern):
        parse_lbw(spec, family, PRESETS)


def test_skipped_preset_is_explained():
    presets = parse_presets("OOPS:1,2,3\nALL:" + ",".join(["1"] * 12))
    with pytest.raises(LoraMergeError, match=r"preset 'OOPS' was skipped .*line 1: preset 'OOPS' has 3 values"):
        parse_lbw("OOPS", "sdxl", presets)


def test_bad_x():
    with pytest.raises(LoraMergeError, match="x value"):
        parse_lbw("ALL", "sd1", PRESETS, x=float("nan"))


# ---- factors ----

def test_lbw_factor():
    weights = parse_lbw("0.5" + ",0" * 3 + ",2" + ",1" * 12, "sd1", PRESETS)
    assert lbw_factor(None, "lora_unet_down_blocks_1_attentions_1_proj_in") == 1.0
    assert lbw_factor(weights, "lora_unet_down_blocks_1_attentions_1_proj_in") == 2.0     # IN05
    assert lbw_factor(weights, "lora_unet_down_blocks_0_attentions_0_proj_in") == 0.0     # IN01
    assert lbw_factor(weights, "lora_unet_down_blocks_0_downsamplers_0_conv") == 0.0      # IN03, not in 17-form
    assert lbw_factor(weights, "lora_te_text_model_encoder_layers_3_mlp_fc1") == 0.5
    assert lbw_factor(weights, "lora_unet_time_embedding_linear_1") == 1.0
    assert lbw_factor(weights, "lora_unet_conv_out") == 1.0
    assert lbw_factor(weights, "lora_unet_up_blocks_3_attentions_2_proj_out") == 1.0       # OUT11


def test_sdxl_factor_on_all_modules():
    weights = parse_lbw("MIDD", "sdxl")
    on = {"BASE", "IN07", "IN08", "M00", "OUT00", "OUT01", "OUT02"}
    for name in spec_names("sdxl_locon"):
        assert lbw_factor(weights, name) == (1.0 if block_of(name) in on else 0.0), name
