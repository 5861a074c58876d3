"""Test double of the WebUI's ``scripts/xyz_grid.py`` (the X/Y/Z plot), written from
the host facts (reference A1111_HOST_API.md) §5 — the parts an extension's axes meet:

* ``AxisOption(label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
  choices=None, prepare=None)`` and the ``AxisOptionImg2Img`` / ``AxisOptionTxt2Img`` variants,
  the module-level ``axis_options`` list and its helpers;
* ``Script.ui(is_img2img)`` copying the list into ``current_axis_options`` (entries whose type is
  exactly ``AxisOption``, or whose ``is_img2img`` matches the tab); axis types are indices into it;
* ``process_axis``: dropdown values / ``prepare`` / ``csv_string_to_list_strip``, int and float
  range expansion, ``opt.type`` conversion, then ``confirm(p, values)`` — for all three axes
  before any cell runs;
* per cell a shallow ``copy(p)`` with a copied ``styles`` list, ``apply`` of x, y, z in that order,
  then ``process_images(pc)``; the costliest axis is iterated outermost; labels come from
  ``format_value(p, opt, value)``.

Load it the way the host does: ``importlib.util.spec_from_file_location("xyz_grid.py", path)``,
so its classes report ``__module__ == "xyz_grid.py"`` and it is not put in ``sys.modules``.
Drawing the grid image is not modelled: ``run`` returns an ``XyzResult`` with every cell's
result and copy of ``p``.
"""
import csv
import random
import re
from collections import namedtuple
from copy import copy
from io import StringIO
from itertools import chain, permutations

import numpy as np

try:  # the host double's `modules` package, when it is on sys.path (a module, not a class, is bound
    import modules.scripts as scripts  # here: the host registers every Script subclass in the namespace)
except ImportError:  # pragma: no cover - used only without the host double
    scripts = None

AxisInfo = namedtuple("AxisInfo", ["axis", "values"])


# --- helpers the module offers to axis definitions ------------------------------------------

def apply_field(name):
    def apply(p, x, xs):
        setattr(p, name, x)
    return apply


def apply_prompt(p, x, xs):
    """Prompt S/R: the first value must occur in the prompt or the negative prompt."""
    if xs[0] not in p.prompt and xs[0] not in p.negative_prompt:
        raise RuntimeError(f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")
    p.prompt = p.prompt.replace(xs[0], x)
    p.negative_prompt = p.negative_prompt.replace(xs[0], x)


def apply_override(name, boolean=False):
    def apply(p, x, xs):
        if boolean:
            x = x.lower() == "true"
        p.override_settings[name] = x
    return apply


def boolean_choice(reverse=False):
    def choices():
        return ["False", "True"] if reverse else ["True", "False"]
    return choices


def format_value_add_label(p, opt, x):
    if type(x) is float:
        x = round(x, 8)
    return f"{opt.label}: {x}"


def format_value(p, opt, x):
    if type(x) is float:
        x = round(x, 8)
    return x


def format_value_join_list(p, opt, x):
    return ", ".join(x)


def do_nothing(p, x, xs):
    pass


def format_nothing(p, opt, x):
    return ""


def format_remove_path(p, opt, x):
    import os
    return os.path.basename(x)


def str_permutations(x):
    """Marker type: the axis values become all permutations of the list."""
    return x


def list_to_csv_string(data_list):
    with StringIO() as out:
        csv.writer(out).writerow(data_list)
        return out.getvalue().strip()


def csv_string_to_list_strip(data_str):
    rows = csv.reader(StringIO(data_str), skipinitialspace=True)
    return [value.strip() for value in chain.from_iterable(rows)]


def confirm_range(min_val, max_val, axis_label):
    def confirm(p, xs):
        for x in xs:
            if not (max_val >= x >= min_val):
                raise ValueError(f'{axis_label} value "{x}" out of range [{min_val}, {max_val}]')
    return confirm


# --- axis classes -------------------------------------------------------------------------

class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


class AxisOptionImg2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = True


class AxisOptionTxt2Img(AxisOption):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_img2img = False


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    AxisOption("Seed", int, apply_field("seed")),
    AxisOption("Var. seed", int, apply_field("subseed")),
    AxisOption("Var. strength", float, apply_field("subseed_strength")),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOptionTxt2Img("Hires steps", int, apply_field("hr_second_pass_steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOptionImg2Img("Image CFG Scale", float, apply_field("image_cfg_scale")),
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value),
    AxisOption("Prompt order", str_permutations, do_nothing, format_value=format_value_join_list),
    AxisOption("Denoising", float, apply_field("denoising_strength")),
    AxisOption("Token merging ratio", float, apply_override("token_merging_ratio")),
]


# --- value splitting and range expansion -----------------------------------------------------

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
re_range = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
re_range_float = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
re_range_count = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*\])?\s*")
re_range_count_float = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:\.\d*)?)\s*\])?\s*")


def _number(text):
    return text.replace(" ", "")


def _expand_int(values):
    out = []
    for val in values:
        if val == "":
            continue
        m, mc = re_range.fullmatch(val), re_range_count.fullmatch(val)
        if m is not None:
            start, end = int(_number(m.group(1))), int(_number(m.group(2))) + 1
            step = int(m.group(3)) if m.group(3) is not None else 1
            out += list(range(start, end, step))
        elif mc is not None:
            start, end = int(_number(mc.group(1))), int(_number(mc.group(2)))
            num = int(mc.group(3)) if mc.group(3) is not None else 1
            out += [int(x) for x in np.linspace(start=start, stop=end, num=num).tolist()]
        else:
            out.append(val)
    return out


def _expand_float(values):
    out = []
    for val in values:
        if val == "":
            continue
        m, mc = re_range_float.fullmatch(val), re_range_count_float.fullmatch(val)
        if m is not None:
            start, end = float(_number(m.group(1))), float(_number(m.group(2)))
            step = float(m.group(3)) if m.group(3) is not None else 1
            out += np.arange(start, end + step, step).tolist()
        elif mc is not None:
            start, end = float(_number(mc.group(1))), float(_number(mc.group(2)))
            num = int(mc.group(3)) if mc.group(3) is not None else 1
            out += np.linspace(start=start, stop=end, num=num).tolist()
        else:
            out.append(val)
    return out


def process_axis(p, opt, vals, vals_dropdown, csv_mode=False):
    """The values of one axis, converted and confirmed (the host's nested process_axis)."""
    if opt.label == "Nothing":
        return [0]
    if opt.choices is not None and not csv_mode:
        valslist = vals_dropdown
    elif opt.prepare is not None:
        valslist = opt.prepare(vals)
    else:
        valslist = csv_string_to_list_strip(vals)
    if opt.type == int:
        valslist = _expand_int(valslist)
    elif opt.type == float:
        valslist = _expand_float(valslist)
    elif opt.type == str_permutations:
        valslist = list(permutations(valslist))
    valslist = [opt.type(x) for x in valslist]
    if opt.confirm:
        opt.confirm(p, valslist)
    return valslist


def _fixed_seed(seed):
    if seed is None or seed == "" or seed == -1:
        return int(random.randrange(4294967294))
    return seed


def fix_seed(p):
    p.seed = _fixed_seed(p.seed)
    p.subseed = _fixed_seed(getattr(p, "subseed", -1))


def _loop_order(x_opt, y_opt, z_opt):
    """(outer, middle) axes: the costliest axis outermost, as the host orders them."""
    first, second = "z", "y"
    if x_opt.cost > y_opt.cost and x_opt.cost > z_opt.cost:
        first, second = "x", ("y" if y_opt.cost > z_opt.cost else "z")
    elif y_opt.cost > x_opt.cost and y_opt.cost > z_opt.cost:
        first, second = "y", ("x" if x_opt.cost > z_opt.cost else "z")
    elif z_opt.cost > x_opt.cost and z_opt.cost > y_opt.cost:
        first, second = "z", ("x" if x_opt.cost > y_opt.cost else "y")
    return first, second


Control = namedtuple("Control", ["name", "value"])


class XyzResult:
    """What the double's run returns in place of the host's Processed with the grid image:
    every cell's result, the labels, and ``images``/``info`` for the API double (the cells' first
    images in the host's grid order ``ix + iy·len(xs) + iz·len(xs)·len(ys)``; no grid is drawn).

    (A plain class: the module is not in sys.modules, where dataclasses would look.)"""

    def __init__(self, xs, ys, zs, x_labels, y_labels, z_labels):
        self.xs, self.ys, self.zs = xs, ys, zs
        self.x_labels, self.y_labels, self.z_labels = x_labels, y_labels, z_labels
        self.cells = {}    # (ix, iy, iz) → result of process_images
        self.copies = {}   # (ix, iy, iz) → the processing copy it ran
        self.errors = {}   # (ix, iy, iz) → exception shown by the host
        self.order = []    # (ix, iy, iz) in the order cells ran

    @property
    def images(self):
        out = []
        for iz in range(len(self.zs)):
            for iy in range(len(self.ys)):
                for ix in range(len(self.xs)):
                    res = self.cells.get((ix, iy, iz))
                    out.append(res.images[0] if res is not None and res.images else None)
        return out

    @property
    def info(self):
        import json
        return json.dumps({"x_labels": [str(v) for v in self.x_labels], "y_labels": [str(v) for v in self.y_labels],
                           "z_labels": [str(v) for v in self.z_labels],
                           "errors": {str(k): str(v) for k, v in self.errors.items()}})


class Script(scripts.Script if scripts is not None else object):
    def title(self):
        return "X/Y/Z plot"

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        self.current_axis_options = [x for x in axis_options if type(x) == AxisOption or x.is_img2img == is_img2img]
        # the controls, in the host's order, with the values the host's components start with
        # (the axis-type dropdowns are index-typed: their value reaches run() as an index)
        return [Control(name, value) for name, value in (
            ("x_type", 1), ("x_values", ""), ("x_values_dropdown", []),
            ("y_type", 0), ("y_values", ""), ("y_values_dropdown", []),
            ("z_type", 0), ("z_values", ""), ("z_values_dropdown", []),
            ("draw_legend", True), ("include_lone_images", False), ("include_sub_grids", False),
            ("no_fixed_seeds", False), ("margin_size", 0), ("csv_mode", False))]

    def run(self, p, x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown,
            z_type, z_values, z_values_dropdown, draw_legend=True, include_lone_images=False,
            include_sub_grids=False, no_fixed_seeds=False, margin_size=0, csv_mode=False):
        from modules import processing

        if not no_fixed_seeds:
            fix_seed(p)

        axes = []
        for opt_index, values, dropdown in ((x_type, x_values, x_values_dropdown),
                                            (y_type, y_values, y_values_dropdown),
                                            (z_type, z_values, z_values_dropdown)):
            opt = self.current_axis_options[opt_index]
            if opt.choices is not None and not csv_mode:
                values = list_to_csv_string(dropdown)
            axes.append((opt, process_axis(p, opt, values, dropdown, csv_mode)))
        (x_opt, xs), (y_opt, ys), (z_opt, zs) = axes

        if not no_fixed_seeds:
            xs, ys, zs = (self._fix_axis_seeds(o, v) for o, v in axes)

        result = XyzResult(xs, ys, zs,
                           [x_opt.format_value(p, x_opt, x) for x in xs],
                           [y_opt.format_value(p, y_opt, y) for y in ys],
                           [z_opt.format_value(p, z_opt, z) for z in zs])

        def cell(ix, iy, iz):
            pc = copy(p)
            pc.styles = list(getattr(pc, "styles", []) or [])[:]
            x_opt.apply(pc, xs[ix], xs)
            y_opt.apply(pc, ys[iy], ys)
            z_opt.apply(pc, zs[iz], zs)
            result.copies[ix, iy, iz] = pc
            result.order.append((ix, iy, iz))
            try:
                result.cells[ix, iy, iz] = processing.process_images(pc)
            except Exception as exc:  # the host displays the error and leaves the cell empty
                result.errors[ix, iy, iz] = exc
                result.cells[ix, iy, iz] = None

        sizes = {"x": len(xs), "y": len(ys), "z": len(zs)}
        first, second = _loop_order(x_opt, y_opt, z_opt)
        third = ({"x", "y", "z"} - {first, second}).pop()
        for a in range(sizes[first]):
            for b in range(sizes[second]):
                for c in range(sizes[third]):
                    idx = {first: a, second: b, third: c}
                    cell(idx["x"], idx["y"], idx["z"])
        return result

    @staticmethod
    def _fix_axis_seeds(opt, values):
        if opt.label in ("Seed", "Var. seed"):
            return [_fixed_seed(v) for v in values]
        return values
