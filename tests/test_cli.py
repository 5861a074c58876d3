"""The command line, run as a real subprocess: outputs, exit codes and one-line errors."""
import json
import os
import subprocess
import sys

import pytest
import torch

from delta_oracle import dense_deltas
from lora_factory import make_lora
from lora_merge_ext.loading import load_lora

KEEP = lambda n: "layers_5_self_attn_k" in n or "attn1_to_out" in n or "up_blocks_1_resnets_0_conv2" in n
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args):
    return subprocess.run([sys.executable, "-m", "lora_merge_ext", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    a = make_lora(d / "a.safetensors", "sd15_locon", rank=4, seed=1, keep=KEEP)
    b = make_lora(d / "b.safetensors", "sd15_locon", rank=2, alpha=1.0, seed=2, keep=KEEP)
    return d, a, b


def test_merge_realize_inspect_round_trip(files):
    d, a, b = files
    out = d / "j.safetensors"
    r = run("merge", a, b, "-o", out, "--mode", "join", "--weights=-0.5,1", "--dtype", "fp32")
    assert r.returncode == 0, r.stderr
    assert "merging:" in r.stderr and "wrote" in r.stdout
    assert "modules at rank 6, concat: exact by construction" in r.stdout  # ranks 4 + 2
    da, db, dj = dense_deltas(a), dense_deltas(b), dense_deltas(out)
    for n in dj:
        assert torch.allclose(dj[n], -0.5 * da[n] + db[n], rtol=1e-5, atol=1e-7)
    info = json.loads(run("inspect", out, "--json").stdout)
    assert [c["name"] for c in info["components"]] == ["a", "b"] and info["family"] == "SD1"
    provenance = json.loads(info["metadata"]["ljl_provenance"])  # whole, not shortened as on screen
    assert [i["weight"] for i in provenance["inputs"]] == [-0.5, 1.0] and len(info["metadata"]["ljl_provenance"]) > 200
    assert "…" in run("inspect", out).stdout
    r = run("realize", out, "-o", d / "only_b.safetensors", "--sigma", "0,1")
    assert r.returncode == 0, r.stderr
    ob = dense_deltas(d / "only_b.safetensors")
    for n in ob:
        assert torch.allclose(ob[n], db[n], rtol=1e-5, atol=1e-7)


def test_svd_with_lbw_per_input(files):
    d, a, b = files
    out = d / "s.safetensors"
    r = run("merge", a, b, "-o", out, "--mode", "svd", "--rank", "2", "--conv-rank", "1", "--lbw", "MIDD;", "--quiet")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert "modules at ranks 1–2, svd: relative error" in r.stdout  # 3×3 convolutions at --conv-rank


@pytest.mark.parametrize("args, message", [
    (["merge", "{a}", "{missing}", "-o", "{d}/x.safetensors"], "missing"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--weights", "1,zz"], "--weights"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--weights=1,2,3"], "3 weights for 2 inputs"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--lbw", "ALL;ALL;ALL"], "3 lbw specs"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--lbw", "NOSUCH"], "NOSUCH"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--mode", "add"], "equal ranks"),
    (["merge", "{a}", "{b}", "-o", "{a}", "--overwrite"], "input"),
    (["merge", "{a}", "{b}", "-o", "{b}"], "input"),
    (["merge", "{a}", "{notalora}", "-o", "{d}/x.safetensors"], "notalora"),
    (["realize", "{a}", "-o", "{d}/x.safetensors", "--sigma", "1,1,1"], "expected 1 or 4"),
    (["realize", "{a}", "-o", "{d}/x.safetensors", "--sigma", "1", "--lbw", "1,1"], "2"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--rank", "two"], "two"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--rank", "2", "--energy", "0.9"],
     "rank and energy only apply to svd merges"),
    (["inspect", "{d}"], "folder|directory"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.pt"], "x.pt: the output is a safetensors file; name it NAME.safetensors"),
    (["merge", "{a}", "{b}", "-o", "{d}/merged"], "merged: the output is a safetensors file"),
    (["realize", "{a}", "-o", "{d}/x.ckpt", "--sigma", "1"], "x.ckpt: the output is a safetensors file"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--mode", "add", "--rank", "2"],
     "rank only applies to svd merges"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--weights=1,,0.5"], "--weights '1,,0.5' has an empty entry"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--weights=1_0,1"], "'1_0' is not a number"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--weights="], "--weights is empty"),
    (["merge", "{a}", "{b}", "-o", "{d}/x.safetensors", "--weights", "-0.5,1"], "expected one argument; .*--weights=-0.5,1"),
    (["realize", "{a}", "-o", "{d}/x.safetensors", "--sigma", "1", "--te", "nan"], "--te: 'nan' is not a finite number"),
    (["realize", "{a}", "-o", "{d}/x.safetensors", "--sigma", "1", "--unet", "inf"], "--unet: 'inf' is not a finite"),
    (["realize", "{a}", "-o", "{d}/x.safetensors", "--sigma", "0"], "switches every rank off"),
    (["realize", "{a}", "-o", "{d}/x.safetensors", "--sigma", "1", "--lbw", "NONE"], "switches every rank off"),
    (["merge", "{a}", "-o", "{d}/x.safetensors", "--mode", "blend"], "'blend' is not one of concat, join, ljl"),
    (["merge", "{a}", "-o", "{d}/x.safetensors", "--mode", "JOIN"], "at least two inputs"),
    (["ui", "--port", "abc"], "'abc' is not a port number"),
    (["ui", "--port", "70000"], "not a port number"),
])
def test_bad_input_is_one_error_line_and_status_2(files, args, message):
    d, a, b = files
    notalora = d / "notalora.safetensors"
    notalora.write_bytes(b"hello, this is not a safetensors file")
    args = [x.format(a=a, b=b, d=d, missing=d / "missing.safetensors", notalora=notalora) for x in args]
    before = sorted(os.listdir(d))
    r = run(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    import re
    assert re.search(message, lines[0]), lines[0]
    assert sorted(os.listdir(d)) == before


def test_an_error_during_the_merge_starts_a_line_of_its_own(files):
    """The progress line is closed first, so the error is not glued to 'merging: 1/3 modules'."""
    d, _, _ = files
    same = make_lora(d / "same.safetensors", "sd15_locon", rank=4, seed=3, keep=KEEP)
    later = make_lora(d / "later.safetensors", "sd15_locon", rank=lambda n: 4 if n.startswith("lora_te") else 2,
                      seed=4, keep=KEEP)
    before = sorted(os.listdir(d))
    r = run("merge", same, later, "-o", d / "x.safetensors", "--mode", "add")
    assert r.returncode == 2
    assert "merging: 1/" in r.stderr  # the first module was merged before the refusal
    assert r.stderr.endswith("\n") and r.stderr.split("\n")[-2].startswith("error: add mode needs equal ranks")
    assert sorted(os.listdir(d)) == before


def test_a_reader_that_stops_early_is_not_an_error(files):
    """`inspect … | head -1`: no BrokenPipeError traceback, status 0."""
    _, a, _ = files
    proc = subprocess.Popen([sys.executable, "-m", "lora_merge_ext", "inspect", str(a)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before it writes anything
    assert proc.wait(timeout=300) == 0
    assert proc.stderr.read() == b""


def test_inspect_checks_the_hash_of_an_upper_case_extension(files, tmp_path):
    _, a, b = files
    out = tmp_path / "z.SAFETENSORS"
    assert run("merge", a, b, "-o", out, "--quiet").returncode == 0
    r = run("inspect", out)
    assert r.returncode == 0 and "[matches sshs_model_hash]" in r.stdout


# A signal sent at a fixed point: the first block the streamed concat writes into its temporary file.
_SIGNAL_WHILE_WRITING = """
import os, signal, sys
from lora_merge_ext import cli, ordered_writer
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal delivers it (a background job ignores it)
real, sent = ordered_writer.write_all, getattr(signal, sys.argv[1])
def write_then_signal(*args, **kw):
    real(*args, **kw)
    os.kill(os.getpid(), sent)
ordered_writer.write_all = write_then_signal
sys.argv = ["lora-merge", *sys.argv[2:]]
cli.run()
"""


@pytest.mark.parametrize("name, status", [("SIGTERM", 143), ("SIGHUP", 129), ("SIGINT", 130)])
def test_a_signal_during_the_write_leaves_nothing_behind(files, tmp_path, name, status):
    _, a, b = files
    out = tmp_path / "stopped.safetensors"
    r = subprocess.run([sys.executable, "-c", _SIGNAL_WHILE_WRITING, name, "merge", a, b, "-o", out], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == status, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: interrupted; nothing was written"
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


_SIGNAL_AFTER_RENAME = """
import os, signal, sys
from lora_merge_ext import atomic_write, cli
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal delivers it (a background job ignores it)
real = atomic_write._move_into_place
def move_then_signal(*args, **kw):
    real(*args, **kw)
    os.kill(os.getpid(), signal.SIGINT)
atomic_write._move_into_place = move_then_signal
sys.argv = ["lora-merge", *sys.argv[1:]]
cli.run()
"""


@pytest.mark.parametrize("existing", [False, True])
def test_a_signal_just_after_the_rename_says_the_file_was_written(files, tmp_path, existing):
    _, a, b = files
    out = tmp_path / "late.safetensors"
    if existing:
        out.write_bytes(b"old")
    r = subprocess.run([sys.executable, "-c", _SIGNAL_AFTER_RENAME, "merge", a, b, "-o", out, "--overwrite"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"error: interrupted after {out} was written"
    assert load_lora(out).metadata["sshs_model_hash"]  # the new file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["late.safetensors"]


def test_inspect_shows_a_joined_file_whose_layout_no_longer_fits(files, tmp_path):
    """A join resized by another tool (tensors cut to rank 4, ljl_layout kept): described, with the
    layout flagged, rather than refused; realize still refuses it."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    _, a, b = files
    joined = tmp_path / "j.safetensors"
    assert run("merge", a, b, "-o", joined, "--quiet").returncode == 0
    with safe_open(str(joined), "pt") as f:
        metadata = f.metadata()
    cut = {k: (v[:4] if k.endswith("lora_down.weight") else v[:, :4] if k.endswith("lora_up.weight") else v)
           for k, v in load_file(str(joined)).items()}
    resized = tmp_path / "resized.safetensors"
    save_file({k: v.contiguous() for k, v in cut.items()}, str(resized), metadata=metadata)
    r = run("inspect", resized)
    assert r.returncode == 0, r.stderr
    assert "ranks: 4 ×18" in r.stdout and "join layout (ljl_layout) unusable" in r.stdout and "has rank 6" in r.stdout
    info = json.loads(run("inspect", resized, "--json").stdout)
    assert info["components"] is None and "has rank 6, the file has 4" in info["layout_problem"]
    r = run("realize", resized, "-o", tmp_path / "x.safetensors", "--sigma", "1,0")
    assert r.returncode == 2 and "has rank 6, the file has 4" in r.stderr
