"""Finding and rewriting <ljl:…> tags, and reading the X/Y/Z axis values that rewrite them."""
import re

import pytest
from hypothesis import given, settings, strategies as st

from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.layout import Component, JoinLayout
from lora_merge_ext.ljl_tag import (
    ComponentWeight, LjlTag, check_item, csv_values, expand_numbers, find_tags, format_vector, format_weight,
    has_tag, normalize_list, parse_component_axis, parse_component_value, pick_tag, resolve_component,
    rewrite_prompt, set_component_weight, split_target, split_values,
)
from lora_merge_ext.sigma import parse_sigma


def host_parse(prompt):
    """What the host's extra-network parser hands the `ljl` handler: [(positional, named), …].

    Same pattern and rules as modules/extra_networks.py (reference §3.1-3.2): split on ':', an item
    with exactly one '=' is named, nothing is stripped."""
    out = []
    for m in re.finditer(r"<(\w+):([^>]+)>", prompt):
        if m.group(1) != "ljl":
            continue
        positional, named = [], {}
        for item in m.group(2).split(":"):
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        out.append((positional, named))
    return out


LAYOUT = JoinLayout([Component("style", 4), Component("face", 2)])


# --- tags -------------------------------------------------------------------------------

def test_find_tags_keeps_items_and_spans_and_ignores_other_networks():
    prompt = "a cat, <lora:plain:0.7> <ljl:J:1,0:lbw=ALL>, <ljl:K> end"
    tags = find_tags(prompt)
    assert [t.name for t in tags] == ["J", "K"]
    assert tags[0].items == ("J", "1,0", "lbw=ALL")
    assert prompt[tags[0].start:tags[0].end] == "<ljl:J:1,0:lbw=ALL>"
    assert tags[0].text == "<ljl:J:1,0:lbw=ALL>"
    assert tags[0].vector == "1,0" and tags[0].option("lbw") == "ALL" and tags[0].option("te") is None
    assert tags[1].vector is None
    assert find_tags("no tags <lora:x:1>") == [] and find_tags("") == [] and find_tags(None) == []


def test_vector_is_absent_when_the_second_item_is_an_option():
    tag = find_tags("<ljl:J:te=0.5:lbw=ALL>")[0]
    assert tag.vector is None and tag.option("te") == "0.5"
    assert tag.with_vector("1,0").text == "<ljl:J:1,0:te=0.5:lbw=ALL>"


def test_named_sigma_is_the_vector_not_an_option():
    tag = find_tags("<ljl:J:style=0.5>")[0]
    assert tag.vector == "style=0.5"
    assert tag.with_vector("1,0").text == "<ljl:J:1,0>"


def test_with_vector_and_with_option_touch_only_their_item():
    tag = find_tags("<ljl:J: 1,0 :unet=0.8:lbw=ALL>")[0]
    assert tag.with_vector("0,1").text == "<ljl:J:0,1:unet=0.8:lbw=ALL>"
    assert tag.with_option("lbw", "INS").text == "<ljl:J: 1,0 :unet=0.8:lbw=INS>"
    assert tag.with_option("te", "0.5").text == "<ljl:J: 1,0 :unet=0.8:lbw=ALL:te=0.5>"
    bare = find_tags("<ljl:J>")[0]
    assert bare.with_vector("0.5").with_option("lbw", "1,0,1").text == "<ljl:J:0.5:lbw=1,0,1>"


def test_w_is_read_and_rewritten_as_lbw():
    tag = find_tags("<ljl:J:w=MIDD:x=0.5>")[0]
    assert tag.vector is None and tag.option("lbw") == "MIDD" and tag.option("x") == "0.5"
    assert tag.with_option("lbw", "INS").text == "<ljl:J:lbw=INS:x=0.5>"   # replaced, never a second lbw


@pytest.mark.parametrize("bad", ["1:0", "1>0", "<1", "", "  "])
def test_items_that_would_break_the_tag_are_refused(bad):
    with pytest.raises(LoraMergeError):
        check_item(bad, "Σ vector")
    with pytest.raises(LoraMergeError):
        find_tags("<ljl:J:1>")[0].with_vector(bad)


def test_pick_tag_first_or_by_name():
    prompt = "<ljl:A:1> x <ljl:B:1,0> y <ljl:B:0,1>"
    assert pick_tag(prompt).name == "A"
    assert pick_tag(prompt, "B").vector == "1,0"  # the first tag of that name
    assert has_tag(prompt, "B") and not has_tag(prompt, "C") and has_tag(prompt)
    with pytest.raises(LoraMergeError, match=r"no <ljl:C:…> tag; its <ljl> tags are: A, B"):
        pick_tag(prompt, "C")
    with pytest.raises(LoraMergeError, match="has no <ljl:NAME:…> tag"):
        pick_tag("a cat <lora:J:1>")


def test_rewrite_prompt_changes_one_tag_and_the_host_sees_the_new_values():
    prompt = "photo, <ljl:A:1,1:lbw=ALL>, <lora:p:0.5> and <ljl:B:1>, BREAK tail"
    out = rewrite_prompt(prompt, "B", lambda t: t.with_vector("0.25").with_option("lbw", "INS"))
    assert out == "photo, <ljl:A:1,1:lbw=ALL>, <lora:p:0.5> and <ljl:B:0.25:lbw=INS>, BREAK tail"
    assert host_parse(out) == [(["A", "1,1"], {"lbw": "ALL"}), (["B", "0.25"], {"lbw": "INS"})]
    out = rewrite_prompt(prompt, None, lambda t: t.with_vector("0,1"))
    assert host_parse(out)[0] == (["A", "0,1"], {"lbw": "ALL"})


# --- splitting axis text ----------------------------------------------------------------------

def test_csv_quoting_keeps_commas_inside_values():
    assert split_values('"1,0", "0,1", "0.5,1"') == ["1,0", "0,1", "0.5,1"]
    assert csv_values('"1,0","0,1"') == ["1,0", "0,1"]
    assert split_values("1,0, 0,1") == ["1", "0", "0", "1"]  # unquoted commas separate values


def test_bar_separator_needs_no_quotes():
    assert split_values("1 0 | 0 1 | 0.5 1") == ["1 0", "0 1", "0.5 1"]
    assert split_values("1,0|0,1|") == ["1,0", "0,1"]
    assert split_values('"1,0" | "0,1"') == ["1,0", "0,1"]
    assert split_values("J: 1,0 | K: 0,1") == ["J: 1,0", "K: 0,1"]


@pytest.mark.parametrize("text, expected", [
    ("1 0", "1,0"), ("1, 0", "1,0"), (" 0.5  1 ", "0.5,1"), ("2.5 * 8, 0*4", "2.5*8,0*4"),
    ("my style = 0.5, face=1", "my style=0.5,face=1"), ("ALL", "ALL"), ("1", "1"),
])
def test_normalize_list(text, expected):
    assert normalize_list(text) == expected


def test_split_target():
    assert split_target("1,0") == (None, "1,0")
    assert split_target(" J2 : 1,0 ") == ("J2", "1,0")
    assert split_target("my lora: ALL") == ("my lora", "ALL")
    with pytest.raises(LoraMergeError, match="empty tag name"):
        split_target(": 1,0")


# --- numbers and ranges ------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("0, 0.5, 1", [0, 0.5, 1]),
    ("0-1 [5]", [0, 0.25, 0.5, 0.75, 1]),
    ("0-1 (5)", [0, 0.25, 0.5, 0.75, 1]),
    ("0-1 (+0.25)", [0, 0.25, 0.5, 0.75, 1]),
    ("0-1 (+0.3)", [0, 0.3, 0.6, 0.9]),  # never past the end
    ("1-0 (-0.5)", [1, 0.5, 0]),
    ("0-2", [0, 1, 2]),
    ("-1-1 [3]", [-1, 0, 1]),
    ("1e-3, -.5", [0.001, -0.5]),
    ("0-1 [1]", [0]),
    ("0, 0.5-1 [2] | 2", [0, 0.5, 1, 2]),
])
def test_expand_numbers(text, expected):
    assert expand_numbers(text) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("text, message", [
    ("0-1 (0.25)", "count must be a whole number"),
    ("0-1 (+0)", "step of 0"),
    ("0-1 (-0.5)", "gives no values"),
    ("0-1 [5000]", "at most 1000"),
    ("a", "not a number"),
])
def test_expand_numbers_errors(text, message):
    with pytest.raises(LoraMergeError, match=re.escape(message)):
        expand_numbers(text)


@pytest.mark.parametrize("text, message", [
    ("0-1 (+0." + "0" * 320 + "1)", "more than 1000 values"),  # a step so small the count overflows
    ("0-" + "9" * 400, "too large"),  # an end beyond float range
    ("0-" + "9" * 400 + " [3]", "too large"),  # was [nan, inf, inf]
    ("0-1000 (+0.5)", "more than 1000 values"),
])
def test_expand_numbers_refuses_ranges_too_large(text, message):
    with pytest.raises(LoraMergeError, match=re.escape(message)):
        expand_numbers(text)


def test_a_huge_stepped_range_is_refused_before_any_list_is_built():
    import tracemalloc
    tracemalloc.start()
    try:
        with pytest.raises(LoraMergeError, match="more than 1000 values"):
            expand_numbers("0-2000000")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_an_over_long_csv_field_is_a_one_line_error():
    with pytest.raises(LoraMergeError, match="comma-separated"):
        split_values('"' + "1" * 200_000 + '"')


def test_format_weight():
    assert [format_weight(v) for v in (0.25, 1.0, -0.5, 0.1 + 0.2, -0.0, 2e-9, 3)] == \
        ["0.25", "1", "-0.5", "0.3", "0", "0", "3"]


# --- component weights ---------------------------------------------------------------------------

def test_component_axis_values_round_trip():
    values = parse_component_axis("face: 0-1 [3]")
    assert values == ["face: 0", "face: 0.5", "face: 1"]
    assert [parse_component_value(v) for v in values] == [ComponentWeight(None, "face", w) for w in (0, 0.5, 1)]
    assert parse_component_axis("J2:2: -1, 1") == ["J2:2: -1", "J2:2: 1"]
    assert parse_component_value("J2:2: -1") == ComponentWeight("J2", "2", -1.0)
    assert parse_component_value("my style: 0.5").component == "my style"


@pytest.mark.parametrize("text, message", [
    ("0, 0.5, 1", "does not say which component"),
    ("A: 0, B: 1", "name the component once"),
    ("X:A:B: 1", "name the component once"),
    ("A: ", "no numbers"),
    (":A: 1", "name the component once"),
])
def test_component_axis_errors(text, message):
    with pytest.raises(LoraMergeError, match=re.escape(message)):
        parse_component_axis(text)


def test_resolve_component_by_name_then_position():
    assert resolve_component(LAYOUT, "face") == 1
    assert resolve_component(LAYOUT, "1") == 0
    with pytest.raises(LoraMergeError, match=r"unknown component 'hair'; components are 1=style, 2=face"):
        resolve_component(LAYOUT, "hair")
    with pytest.raises(LoraMergeError, match="unknown component '3'"):
        resolve_component(LAYOUT, "3")
    named_2 = JoinLayout([Component("2", 1), Component("x", 1)])
    assert resolve_component(named_2, "2") == 0  # a name wins over a position
    twins = JoinLayout([Component("a", 1), Component("a", 1)])
    with pytest.raises(LoraMergeError, match="several components"):
        resolve_component(twins, "a")


def test_set_component_weight_on_each_vector_form():
    assert set_component_weight("1,1", LAYOUT, 1, 0.5) == "1,0.5"
    assert set_component_weight(None, LAYOUT, 0, 0) == "0,1"
    assert set_component_weight("0.5", LAYOUT, 1, 2) == "0.5,2"
    assert set_component_weight("face=1", LAYOUT, 0, 0.25) == "0.25,1"
    per_rank = "1,0.5,1,1,1,1"  # not uniform inside 'style': stays per rank
    out = set_component_weight(per_rank, LAYOUT, 1, 0)
    assert out == "1,0.5,1*2,0*2"
    assert parse_sigma(out, LAYOUT) == [1, 0.5, 1, 1, 0, 0]
    single = JoinLayout([Component("only", 3)])
    assert set_component_weight("1", single, 0, 0.75) == "0.75"


def test_set_component_weight_rejects_a_vector_that_does_not_fit():
    with pytest.raises(LoraMergeError, match="expected 1, 2 \\(one per component\\) or 6"):
        set_component_weight("1,0,1", LAYOUT, 0, 1)


@settings(max_examples=60, deadline=None)
@given(ranks=st.lists(st.integers(1, 4), min_size=1, max_size=4), data=st.data())
def test_set_component_weight_sets_exactly_that_slice(ranks, data):
    layout = JoinLayout([Component(f"c{i}", r) for i, r in enumerate(ranks)])
    total = sum(ranks)
    values = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, -1.0, 0.125]), min_size=total, max_size=total))
    index = data.draw(st.integers(0, len(ranks) - 1))
    weight = data.draw(st.sampled_from([0.0, 0.3, 2.0, -0.75]))
    out = set_component_weight(format_vector(values, layout), layout, index, weight)
    lo = sum(ranks[:index])
    expected = values[:lo] + [weight] * ranks[index] + values[lo + ranks[index]:]
    assert parse_sigma(out, layout) == pytest.approx(expected)


def test_format_vector_reads_back():
    assert format_vector([1, 1, 1, 1, 0, 0], LAYOUT) == "1,0"
    assert parse_sigma(format_vector([1, 1, 0, 1, 0, 0], LAYOUT), LAYOUT) == [1, 1, 0, 1, 0, 0]


def test_tag_dataclass_is_immutable():
    tag = LjlTag(0, 9, ("J", "1"))
    with pytest.raises(Exception):
        tag.items = ("K",)
