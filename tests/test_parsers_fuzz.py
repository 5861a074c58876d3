"""Property tests: every input either means what the docs say (checked against simple oracles
written here) or raises LoraMergeError, never any other exception.

Generated examples per run: see EXAMPLES below (sum printed by test_example_budget).
"""
import math
import tracemalloc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.layout import Component, JoinLayout
from lora_merge_ext.lbw import parse_lbw
from lora_merge_ext.lbw_blocks import BLOCK_IDS, FORMS, block_of
from lora_merge_ext.presets import parse_presets, preset_names
from lora_merge_ext.sigma import format_sigma, parse_sigma

EXAMPLES = {
    "sigma_structured": 1500, "sigma_named": 800, "sigma_alphabet": 1200, "sigma_any_text": 400,
    "sigma_huge": 200, "format_round_trip": 500, "lbw_lists": 1200, "lbw_alphabet": 800,
    "lbw_names": 400, "block_of": 1000, "presets_file": 600,
}


def fuzz(name):
    return settings(max_examples=EXAMPLES[name], deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


ERROR = "error"


def outcome(fn, *args, **kwargs):
    """fn's result, or ERROR when it raised LoraMergeError (any other exception fails the test)."""
    try:
        return fn(*args, **kwargs)
    except LoraMergeError as exc:
        assert "\n" not in str(exc)
        return ERROR


# ---------------------------------------------------------------- oracles

def oracle_number(text):
    s = text.strip()
    if not s or any(c not in "0123456789.eE+-" for c in s):
        return None
    try:
        value = float(s)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def oracle_count(text):
    s = text.strip()
    if not s or any(c not in "0123456789" for c in s):
        return None
    s = s.lstrip("0")
    return int(s) if s and len(s) <= 9 else None


def oracle_sigma(text, layout):
    names = [c.name for c in layout.components]
    ranks = [c.rank for c in layout.components]
    if not text.strip():
        return ERROR
    entries = text.split(",")
    if "=" in text:
        given_values = {}
        for e in entries:
            if "=" not in e:
                return ERROR
            cut = e.rindex("=")
            name, value = e[:cut].strip(), oracle_number(e[cut + 1:])
            if name not in names or names.count(name) > 1 or name in given_values or value is None:
                return ERROR
            given_values[name] = value
        return [given_values.get(n, 0.0) for n, r in zip(names, ranks) for _ in range(r)]
    pairs = []
    for e in entries:
        value_text, count = (e.split("*", 1)[0], oracle_count(e.split("*", 1)[1])) if "*" in e else (e, 1)
        value = oracle_number(value_text)
        if value is None or count is None:
            return ERROR
        pairs.append((value, count))
    length = sum(c for _, c in pairs)
    if length == 1:
        return [pairs[0][0]] * sum(ranks)
    if length == len(ranks):
        values = [v for v, c in pairs for _ in range(c)]
        return [v for v, r in zip(values, ranks) for _ in range(r)]
    if length == sum(ranks):
        return [v for v, c in pairs for _ in range(c)]
    return ERROR


def oracle_token(text, x):
    s = text.strip()
    if s[:1] in ("X", "x"):
        rest = s[1:].lstrip()
        if not rest:
            return float(x)
        if rest[0] not in "+-":
            return None
        d = oracle_number(rest[1:])
        if d is None:
            return None
        value = x + d if rest[0] == "+" else x - d
        return value if math.isfinite(value) else None
    return oracle_number(s)


FAMILY_FORMS = {"sd1": (17, 26), "sd2": (17, 26), "sdxl": (12, 20)}


def oracle_lbw_values(text, x, family):
    tokens = text.split(",")
    if len(tokens) not in FAMILY_FORMS[family]:
        return ERROR
    values = [oracle_token(t, x) for t in tokens]
    if any(v is None for v in values):
        return ERROR
    out = {b: 0.0 for b in BLOCK_IDS}
    out.update(zip(FORMS[len(values)], values))
    return out


def oracle_lbw(spec, family, presets, x):
    if spec is None or not spec.strip():
        return None
    s = spec.strip()
    if "," not in s:
        if s not in presets:
            return ERROR
        fitting = [f for f in presets[s] if len(f.split(",")) in FAMILY_FORMS[family]]
        return oracle_lbw_values(fitting[0], x, family) if fitting else ERROR
    return oracle_lbw_values(s, x, family)


def oracle_presets(text):
    presets, where, problems = {}, {}, 0
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        name, colon, values = s.partition(":")
        name, values = name.strip(), values.strip()
        tokens = values.split(",")
        group = {17: "sd", 26: "sd", 12: "xl", 20: "xl"}.get(len(tokens))
        ok = (colon and name and not any(c in ",=<>" or c.isspace() for c in name)
              and all(oracle_token(t, 1.0) is not None for t in tokens) and group)
        if not ok:
            problems += 1
            continue
        if (name, group) in where:  # a later line replaces the form, in place
            presets[name][where[name, group]] = values
        else:
            where[name, group] = len(presets.setdefault(name, []))
            presets[name].append(values)
    return presets, problems


def oracle_block(module):
    name = module.split(".", 1)[0]
    if name.startswith(("lora_te_", "lora_te1_", "lora_te2_")):
        return "BASE"
    if not name.startswith("lora_unet_"):
        return None
    p = name[len("lora_unet_"):].split("_") + ["", "", "", ""]

    def idx(s):
        return int(s) if s and len(s) <= 3 and all(c in "0123456789" for c in s) else None

    def slot(prefix, n):
        return f"{prefix}{n:02d}" if n is not None and n < 12 else None

    if p[:2] == ["middle", "block"] and len(name) > len("lora_unet_middle_block"):
        return "M00"
    if p[:2] == ["input", "blocks"]:
        return slot("IN", idx(p[2]))
    if p[:2] == ["output", "blocks"]:
        return slot("OUT", idx(p[2]))
    if p[:2] == ["mid", "block"] and p[2] in ("attentions", "resnets") and idx(p[3]) is not None:
        return "M00"
    if p[:2] in (["down", "blocks"], ["up", "blocks"]) and idx(p[2]) is not None and idx(p[4]) is not None:
        i, j, kind = idx(p[2]), idx(p[4]), p[3]
        if p[0] == "down" and kind in ("attentions", "resnets"):
            return slot("IN", 3 * i + j + 1)
        if p[0] == "down" and kind == "downsamplers":
            return slot("IN", 3 * i + 3)
        if p[0] == "up" and kind in ("attentions", "resnets"):
            return slot("OUT", 3 * i + j)
        if p[0] == "up" and kind == "upsamplers":
            return slot("OUT", 3 * i + 2)
    if p[:2] == ["conv", "in"]:
        return "IN00"
    return None


# ---------------------------------------------------------------- strategies

space = st.sampled_from(["", "", "", " ", "  ", "\t", "\n", "\u3000"])
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
number_text = st.one_of(
    finite.map(repr), finite.map(lambda v: f"{v:.3f}"), finite.map(lambda v: f"{v:e}"),
    st.integers(-5, 5).map(str), st.integers().map(str),
    st.sampled_from([".5", "5.", "+1", "-0", "1e308", "1e309", "-1e999", "nan", "inf", "-inf", "1_0", "١",
                     "0x1", "1e", ".", "-", "", "e5", "1.5.2", "--1", "½", "1 2", "X", "R"]))
count_text = st.one_of(st.integers(0, 30).map(str), st.integers(0, 10**12).map(str),
                       st.sampled_from(["", "-2", "1e9", "2.5", "99999999999", "0001", "9" * 5000, " 3 ", "x"]))
entry = st.builds(lambda sp1, v, star, c, sp2: f"{sp1}{v}{'*' + c if star else ''}{sp2}",
                  space, number_text, st.booleans(), count_text, space)
names = st.sampled_from(["a", "b", "style", "face", "lora", "with space", "Ünï"])
layouts = st.lists(st.tuples(names, st.integers(1, 6)), min_size=1, max_size=4).map(
    lambda cs: JoinLayout([Component(n, r) for n, r in cs]))


@st.composite
def valid_lists(draw, layout):
    """Lists that fit one of the three readings, with repeats mixed in."""
    n = draw(st.sampled_from([1, len(layout.components), layout.total_rank]))
    values = draw(st.lists(st.sampled_from([0, 1, -1, 0.5, 2.5, 1e-3]), min_size=n, max_size=n))
    parts, i = [], 0
    while i < n:
        run = 1
        while i + run < n and values[i + run] == values[i]:
            run += 1
        use = draw(st.integers(1, run))
        parts.append(f"{values[i]}*{use}" if use > 1 or draw(st.booleans()) else str(values[i]))
        i += use
    return ",".join(parts)


# ---------------------------------------------------------------- Σ

def check_sigma(text, layout):
    got = outcome(parse_sigma, text, layout)
    assert got == oracle_sigma(text, layout), (text, got)
    if got is not ERROR:
        assert len(got) == layout.total_rank


@fuzz("sigma_structured")
@given(layouts, st.data())
def test_sigma_structured(layout, data):
    text = data.draw(st.one_of(valid_lists(layout), st.lists(entry, min_size=1, max_size=8).map(",".join)))
    check_sigma(text, layout)


@fuzz("sigma_named")
@given(layouts, st.lists(st.tuples(space, st.one_of(names, st.text(max_size=4)), space, st.sampled_from(["=", "==", ":", ""]),
                                   number_text), min_size=1, max_size=5))
def test_sigma_named(layout, items):
    text = ",".join(f"{s1}{n}{s2}{eq}{v}" for s1, n, s2, eq, v in items)
    check_sigma(text, layout)


@fuzz("sigma_alphabet")
@given(layouts, st.text(alphabet="0123456789.,*=-+eE xXnaif:\t", max_size=40))
def test_sigma_alphabet(layout, text):
    check_sigma(text, layout)


@fuzz("sigma_any_text")
@given(layouts, st.text(max_size=60))
def test_sigma_any_text(layout, text):
    check_sigma(text, layout)


@fuzz("sigma_huge")
@given(layouts, st.integers(10**6, 10**40), st.integers(1, 3), st.integers(0, 3000))
def test_sigma_huge_counts_allocate_nothing(layout, count, pieces, width):
    text = ",".join([f"1*{count}"] * pieces + ["0.5"] * width)
    tracemalloc.start()
    try:
        check_sigma(text, layout)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000 + 200 * len(text)


def test_sigma_very_long_inputs():
    layout = JoinLayout([Component("a", 3), Component("b", 2)])
    assert outcome(parse_sigma, "1," * 200_000 + "1", layout) == ERROR
    assert outcome(parse_sigma, "9" * 100_000, layout) == ERROR          # a float too large
    assert outcome(parse_sigma, "1*" + "0" * 100_000 + "5", layout) == [1.0] * 5
    assert outcome(parse_sigma, "a=" + "1" * 50_000, JoinLayout([Component("a", 2)])) == ERROR


@fuzz("format_round_trip")
@given(st.lists(st.one_of(finite, st.sampled_from([0.0, 1.0, 0.5, -1.0])), min_size=1, max_size=40), st.data())
def test_format_round_trip(values, data):
    cuts = sorted(data.draw(st.sets(st.integers(1, len(values) - 1), max_size=3))) if len(values) > 1 else []
    bounds = [0] + cuts + [len(values)]
    layout = JoinLayout([Component(f"c{i}", b - a) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))])
    assert parse_sigma(format_sigma(values), layout) == values


# ---------------------------------------------------------------- lbw

TOKEN_POOL = ["0", "1", "-1", "0.5", " 1 ", "\t0.25", "1e-3", ".5", "5.", "+2", "-0", "X", "x", "X+0.5", "X-1",
              " X + 2 ", "x-.5", "X+", "X*2", "XX", "R", "U", "r", " u", "X+1e309", "X-inf", "nan", "inf", "1e309",
              "", " ", "1_0", "١", "a", "1*2", "1=2", "1:2", "1 2", "½"]
token = st.one_of(st.sampled_from(TOKEN_POOL), finite.map(repr))
families = st.sampled_from(["sd1", "sd2", "sdxl"])
xs = st.one_of(st.sampled_from([1.0, 0.0, -0.5, 2.0]), finite)
PRESET_TEXT = "\n".join([f"ALL:{','.join(['1'] * 17)}", f"ALL:{','.join(['1'] * 12)}", f"MIX:{','.join(['X-0.5'] * 20)}",
                         f"SD:{','.join(['0.25'] * 26)}", "0.5:" + ",".join(["0.5"] * 17), "A B:1"])
PRESETS = parse_presets(PRESET_TEXT)


def check_lbw(spec, family, x):
    got = outcome(parse_lbw, spec, family, PRESETS, x=x)
    assert got == oracle_lbw(spec, family, PRESETS, x), (spec, family, got)
    if got not in (None, ERROR):
        assert list(got) == list(BLOCK_IDS)


@fuzz("lbw_lists")
@given(families, xs, st.sampled_from([11, 12, 13, 16, 17, 18, 19, 20, 25, 26, 27, 61]), st.data())
def test_lbw_lists(family, x, length, data):
    tokens = data.draw(st.lists(st.sampled_from(TOKEN_POOL[:17]), min_size=length, max_size=length))
    for _ in range(data.draw(st.integers(0, 2))):
        tokens[data.draw(st.integers(0, length - 1))] = data.draw(token)
    check_lbw(",".join(tokens), family, x)


@fuzz("lbw_alphabet")
@given(families, st.text(alphabet="0123456789.,-+ XxRU=:e\t", max_size=80))
def test_lbw_alphabet(family, text):
    check_lbw(text, family, 1.0)


@fuzz("lbw_names")
@given(families, xs, st.one_of(st.sampled_from(["ALL", "MIX", "SD", "0.5", "A B", "all", "NONE", " ALL ", "", "\t"]),
                               st.text(max_size=12)))
def test_lbw_names(family, x, spec):
    check_lbw(spec, family, x)
    assert set(preset_names(PRESETS, family)) == {n for n in PRESETS if oracle_lbw(n, family, PRESETS, 1.0) != ERROR}


def test_lbw_very_long_inputs():
    assert outcome(parse_lbw, ",".join(["1"] * 100_000), "sd1", PRESETS) == ERROR
    assert outcome(parse_lbw, "Q" * 100_000, "sdxl", PRESETS) == ERROR
    assert outcome(parse_lbw, ",".join(["9" * 400] + ["1"] * 11), "sdxl", PRESETS) == ERROR


# ---------------------------------------------------------------- module names

module_piece = st.one_of(
    st.sampled_from(["input_blocks", "output_blocks", "middle_block", "mid_block", "down_blocks", "up_blocks",
                     "attentions", "resnets", "downsamplers", "upsamplers", "conv", "in", "out", "time_embed",
                     "label_emb", "proj", "", "1x"]),
    st.integers(0, 15).map(str), st.integers(0, 10**6).map(str), st.sampled_from(["١", "01", "000", "0\n"]))
module_names = st.builds(
    lambda prefix, pieces, tail: prefix + "_".join(pieces) + tail,
    st.sampled_from(["lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_unet", "unet_", ""]),
    st.lists(module_piece, max_size=7),
    st.sampled_from(["", "_", ".lora_up.weight", ".alpha", "\n", "_proj_in"]))

index = st.one_of(st.integers(0, 12).map(str), st.sampled_from(["1x", "1000", "١", "0\n", "", "01", "999", "x"]))
tail = st.sampled_from(["", "_", "\n", "_0_proj_in", "_conv", "_1_transformer_blocks_0_attn1_to_q", ".alpha", "x", "0"])
structured_names = st.one_of(
    st.builds(lambda kind, n, t: f"lora_unet_{kind}_{n}{t}",
              st.sampled_from(["input_blocks", "output_blocks", "middle_block", "mid_block_attentions",
                               "mid_block_resnets", "mid_block_upsamplers"]), index, tail),
    st.builds(lambda side, i, kind, j, t: f"lora_unet_{side}_blocks_{i}_{kind}_{j}{t}",
              st.sampled_from(["down", "up"]), index,
              st.sampled_from(["attentions", "resnets", "downsamplers", "upsamplers", "samplers"]), index, tail),
    st.builds(lambda pre, t: pre + t, st.sampled_from(["lora_unet_conv_in", "lora_unet_conv_out", "lora_te",
                                                       "lora_unet_time_embed", "lora_te2"]), tail))


@fuzz("block_of")
@given(st.one_of(structured_names, module_names, st.text(max_size=40)))
def test_block_of_matches_oracle(module):
    block = block_of(module)
    assert block is None or block in BLOCK_IDS
    assert block == oracle_block(module), module


# ---------------------------------------------------------------- preset file

preset_line = st.one_of(
    st.builds(lambda sp, n, sep, toks: f"{sp}{n}{sep}{','.join(toks)}", space,
              st.sampled_from(["ALL", "P", "Q", "a b", "x=y", "", "#c", "A,B", "ALL0.5"]),
              st.sampled_from([":", ": ", " : ", "", "::"]),
              st.one_of(st.lists(st.sampled_from(TOKEN_POOL[:12]), min_size=12, max_size=12),
                        st.lists(st.sampled_from(TOKEN_POOL[:12]), min_size=17, max_size=17),
                        st.lists(st.sampled_from(TOKEN_POOL), min_size=0, max_size=27))),
    st.text(max_size=30), st.just(""), st.just("# comment"))


@fuzz("presets_file")
@given(st.lists(preset_line, max_size=12), st.sampled_from(["\n", "\r\n", "\r"]))
def test_preset_file(lines, newline):
    text = newline.join(lines)
    presets = parse_presets(text)
    expected, problems = oracle_presets(text)
    assert presets == expected
    assert len(presets.problems) == problems
    assert all(p.startswith("line ") and "\n" not in p for p in presets.problems)
    for name in presets:
        for family in ("sd1", "sdxl"):
            check = outcome(parse_lbw, name, family, presets)
            assert check == oracle_lbw(name, family, presets, 1.0)


def test_example_budget():
    assert sum(EXAMPLES.values()) >= 5000
