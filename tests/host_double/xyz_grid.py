"""Test double of the WebUI's root script ``scripts/xyz_grid.py`` (the X/Y/Z plot), written from the
host facts in reference A1111_HOST_API.md §5 — the parts a third-party axis meets:

* ``AxisOption(label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
  choices=None, prepare=None)`` with the ``AxisOptionTxt2Img`` / ``AxisOptionImg2Img`` variants
  (``is_img2img`` False / True), and the module-level ``axis_options`` list ("Nothing" first);
* ``Script.ui(is_img2img)`` copies into ``current_axis_options`` the entries whose class is exactly
  ``AxisOption`` or whose ``is_img2img`` matches the tab; ``run`` gets axis types as indices into it;
* the values of an axis: "Nothing" → ``[0]``; a dropdown's list when the axis has ``choices`` and
  "Use text inputs instead of dropdowns" (``csv_mode``) is off; else ``prepare(text)`` when set;
  else the CSV fields of the text (double quotes may hold commas), stripped.  ``int`` and ``float``
  axes expand ``a-b``, ``a-b (+step)`` and ``a-b [count]``; then every value goes through
  ``type``, and ``confirm(p, values)`` runs — for all three axes before any cell;
* each cell is a shallow ``copy(p)`` with its own ``styles`` list, x, y, z applied in that order,
  then ``modules.processing.process_images``; the costliest axis is the outermost loop (on a tie
  z is outside y, y outside x).

Only a few built-in axes are defined (Nothing, Seed, Steps, CFG Scale, and Prompt S/R, which
replaces its first value by the cell's in the prompt and negative prompt, not the hires prompt).
No grid image is drawn: ``run`` returns an ``XyzResult``.  Load the file the way the host does (``modules.script_loading``):
its classes then report ``__module__ == "xyz_grid.py"`` and it is not in ``sys.modules``.
"""
import csv
import itertools
import json
import random
import re
from copy import copy
from io import StringIO

try:  # the double's `modules`; bound as a module so the loader does not also register its base Script
    import modules.scripts as scripts
except ImportError:  # pragma: no cover - only when read outside the double
    scripts = None


# --- helpers for axis definitions ------------------------------------------------------------

def apply_field(name):
    def apply(p, x, xs):
        setattr(p, name, x)
    return apply


def format_value(p, opt, x):
    return round(x, 8) if isinstance(x, float) else x


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {format_value(p, opt, x)}"


def format_nothing(p, opt, x):
    return ""


def do_nothing(p, x, xs):
    pass


def apply_prompt(p, x, xs):
    if xs[0] not in p.prompt and xs[0] not in p.negative_prompt:
        raise RuntimeError(f"Prompt S/R did not find {xs[0]} in prompt or negative prompt.")
    p.prompt = p.prompt.replace(xs[0], x)
    p.negative_prompt = p.negative_prompt.replace(xs[0], x)


def list_to_csv_string(data_list):
    buffer = StringIO()
    csv.writer(buffer).writerow(data_list)
    return buffer.getvalue().strip()


def csv_string_to_list_strip(data_str):
    return [field.strip() for row in csv.reader(StringIO(data_str), skipinitialspace=True) for field in row]


# --- axis classes ---------------------------------------------------------------------------------

class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.choices = choices
        self.prepare = prepare


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
    AxisOption("Steps", int, apply_field("steps")),
    AxisOption("CFG Scale", float, apply_field("cfg_scale")),
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value),
]


# --- axis values --------------------------------------------------------------------------------

_NUM = r"[+-]?\s*\d+(?:\.\d*)?"
_RANGE = re.compile(rf"\s*({_NUM})\s*-\s*({_NUM})\s*(?:\(\s*({_NUM})\s*\)|\[\s*(\d+)\s*\])?\s*")


def _linspace(start, end, count):
    if count == 1:
        return [start]
    return [start + (end - start) * k / (count - 1) for k in range(count)]


def _expand_ranges(values, number):
    """Replace every ``a-b``, ``a-b (+step)`` or ``a-b [count]`` by its numbers; drop empty values."""
    out = []
    for text in values:
        if text == "":
            continue
        m = _RANGE.fullmatch(text)
        if m is None:
            out.append(text)
            continue
        start, end = (number(g.replace(" ", "")) for g in (m[1], m[2]))
        if m[4] is not None:
            out += [number(v) for v in _linspace(start, end, int(m[4]))]
            continue
        step = number(m[3].replace(" ", "")) if m[3] else 1
        if number is int:
            out += list(range(start, end + 1, step))
        else:  # end included when the steps land on it
            count = int((end - start) / step + 1e-9) + 1 if (end - start) * step >= 0 else 0
            out += [start + k * step for k in range(count)]
    return out


def process_axis(p, opt, text, dropdown, csv_mode=False):
    """The converted, confirmed values of one axis (see the module docstring)."""
    if opt.label == "Nothing":
        return [0]
    if opt.choices is not None and not csv_mode:
        values = list(dropdown)
    elif opt.prepare is not None:
        values = opt.prepare(text)
    else:
        values = csv_string_to_list_strip(text)
    if opt.type in (int, float):
        values = _expand_ranges(values, opt.type)
    values = [opt.type(v) for v in values]
    if opt.confirm:
        opt.confirm(p, values)
    return values


def _concrete_seed(seed):
    return random.randrange(4294967294) if seed in (None, "", -1) else seed


# --- the result ---------------------------------------------------------------------------------

class XyzResult:
    """What ``run`` returns instead of the host's grid: the values and labels of each axis, and per
    cell ``(ix, iy, iz)`` the result of ``process_images`` (``cells``, None when it raised), the
    processing copy it ran (``copies``) and the exception (``errors``).  ``images`` are the cells'
    first images in the host's grid order (x fastest, then y, then z); ``info`` is JSON."""

    def __init__(self, axes):
        (self.xs, self.x_labels), (self.ys, self.y_labels), (self.zs, self.z_labels) = axes
        self.cells, self.copies, self.errors = {}, {}, {}

    @property
    def images(self):
        shown = []
        for iz, iy, ix in itertools.product(range(len(self.zs)), range(len(self.ys)), range(len(self.xs))):
            cell = self.cells.get((ix, iy, iz))
            shown.append(cell.images[0] if cell is not None and cell.images else None)
        return shown

    @property
    def info(self):
        return json.dumps({"x_labels": [str(v) for v in self.x_labels], "y_labels": [str(v) for v in self.y_labels],
                           "z_labels": [str(v) for v in self.z_labels],
                           "errors": {str(k): str(v) for k, v in self.errors.items()}})


class Control:
    """A UI control of the double: what the runner needs is the value it starts with."""

    def __init__(self, name, value):
        self.name, self.value = name, value


_CONTROLS = (("x_type", 1), ("x_values", ""), ("x_values_dropdown", []),
             ("y_type", 0), ("y_values", ""), ("y_values_dropdown", []),
             ("z_type", 0), ("z_values", ""), ("z_values_dropdown", []),
             ("draw_legend", True), ("include_lone_images", False), ("include_sub_grids", False),
             ("no_fixed_seeds", False), ("vary_seeds_x", False), ("vary_seeds_y", False), ("vary_seeds_z", False),
             ("margin_size", 0), ("csv_mode", False))


class Script(scripts.Script if scripts is not None else object):
    def title(self):
        return "X/Y/Z plot"

    def show(self, is_img2img):
        return True

    def ui(self, is_img2img):
        self.current_axis_options = [o for o in axis_options
                                     if type(o) is AxisOption or o.is_img2img == is_img2img]
        return [Control(name, value) for name, value in _CONTROLS]

    def run(self, p, x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown,
            z_type, z_values, z_values_dropdown, draw_legend=True, include_lone_images=False,
            include_sub_grids=False, no_fixed_seeds=False, vary_seeds_x=False, vary_seeds_y=False,
            vary_seeds_z=False, margin_size=0, csv_mode=False):
        if not no_fixed_seeds:
            p.seed = _concrete_seed(p.seed)
            p.subseed = _concrete_seed(getattr(p, "subseed", -1))
        options, values = [], []
        for index, text, dropdown in ((x_type, x_values, x_values_dropdown), (y_type, y_values, y_values_dropdown),
                                      (z_type, z_values, z_values_dropdown)):
            opt = self.current_axis_options[index]
            found = process_axis(p, opt, text, dropdown, csv_mode)
            if not no_fixed_seeds and opt.label == "Seed":
                found = [_concrete_seed(v) for v in found]
            options.append(opt)
            values.append(found)
        result = XyzResult([(vals, [opt.format_value(p, opt, v) for v in vals]) for opt, vals in zip(options, values)])
        outer_first = sorted((2, 1, 0), key=lambda axis: options[axis].cost, reverse=True)
        for picks in itertools.product(*(range(len(values[axis])) for axis in outer_first)):
            cell = [0, 0, 0]
            for axis, pick in zip(outer_first, picks):
                cell[axis] = pick
            self._run_cell(p, options, values, tuple(cell), result, (vary_seeds_x, vary_seeds_y, vary_seeds_z))
        return result

    @staticmethod
    def _run_cell(p, options, values, cell, result, vary_seeds=(False, False, False)):
        from modules import errors, processing
        pc = copy(p)
        pc.styles = list(getattr(p, "styles", None) or [])
        for opt, vals, pick in zip(options, values, cell):
            opt.apply(pc, vals[pick], vals)
        stride = 1  # the host's "Vary seeds for X/Y/Z": one seed per cell along the ticked axes
        for vary, vals, pick in zip(vary_seeds, values, cell):
            if vary:
                pc.seed += pick * stride
                stride *= len(vals)
        result.copies[cell] = pc
        try:
            result.cells[cell] = processing.process_images(pc)
        except Exception as exc:  # the host shows the error and leaves the cell empty
            errors.display(exc, "generating an X/Y/Z plot cell")
            result.errors[cell] = exc
            result.cells[cell] = None
