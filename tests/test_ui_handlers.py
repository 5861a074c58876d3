"""The merge tab's handlers with real files: merge, name refusals, the overwrite rule, concurrency, refresh."""
import hashlib
import threading
from pathlib import Path

import pytest
import torch

from lora_factory import make_lora
from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.loading import load_lora
from lora_merge_ext.ui.handlers import MergeRequest, MergeService
from lora_merge_ext.ui.library import LoraLibrary

SMALL = lambda name: "down_blocks_0_attentions" in name and "attn2" in name  # noqa: E731  (8 modules)
SDXL_SMALL = lambda name: "input_blocks_4_1_transformer_blocks_0_attn2" in name  # noqa: E731


@pytest.fixture
def lora_dir(tmp_path):
    d = tmp_path / "Lora"
    d.mkdir()
    make_lora(d / "a.safetensors", rank=4, seed=1, keep=SMALL)
    make_lora(d / "b.safetensors", rank=4, seed=2, keep=SMALL, alpha=None)
    return d


@pytest.fixture
def service(lora_dir):
    s = MergeService(LoraLibrary.of(lora_dir))
    s.refresh()
    return s


def deltas(path):
    return {n: m.delta() for n, m in load_lora(path).modules.items()}


def file_bytes(path):
    return Path(path).read_bytes()


def listing(folder):
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*"))


def test_concat_merge_writes_the_weighted_sum_into_the_lora_folder(service, lora_dir):
    seen = []
    out = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[1.0, -0.5], name="mix",
                                     dtype="fp32"), progress=lambda d, t, m: seen.append((d, t)))
    assert out.path == (lora_dir / "mix.safetensors").resolve() and out.path.is_file()
    assert out.label == "mix.safetensors" and out.mode == "concat" and out.ranks == (8,)
    assert out.size == out.path.stat().st_size
    assert load_lora(out.path).metadata["sshs_model_hash"] == out.sha256
    assert [c.name for c in out.layout.components] == ["a", "b"]
    assert seen and seen[-1][0] == seen[-1][1] == 8
    da, db, dm = deltas(lora_dir / "a.safetensors"), deltas(lora_dir / "b.safetensors"), deltas(out.path)
    for name in da:
        torch.testing.assert_close(dm[name], da[name] - 0.5 * db[name], rtol=1e-5, atol=1e-6)
    assert "mix.safetensors" in service.library.labels()  # the list is rescanned after a write


def test_concat_is_streamed_and_reports_its_round_off(service, lora_dir, monkeypatch):
    from lora_merge_ext import api

    def refuse(*a, **k):
        raise AssertionError("the joined LoRA was built in memory")
    monkeypatch.setattr(api, "merge", refuse)  # the tab's concat goes straight into its file
    out = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[1.0, 0.3], name="half",
                                     dtype="fp16", measure=True))
    assert out.ranks == (8,) and out.modules == 8 and [c.name for c in out.layout.components] == ["a", "b"]
    assert out.report.measured and [r.module for r in out.report.rows] == sorted(deltas(out.path))
    da, db, dm = deltas(lora_dir / "a.safetensors"), deltas(lora_dir / "b.safetensors"), deltas(out.path)
    for row in out.report.rows:  # what the report says is the round-off of the saved half-precision file
        want = (da[row.module] + 0.3 * db[row.module]).double()
        assert row.error == pytest.approx(float((dm[row.module].double() - want).norm() / want.norm()), rel=1e-3)
        assert 0.0 < row.error < 1e-3


def test_a_join_is_not_measured_unless_asked(service, lora_dir, monkeypatch):
    """Measuring a join's round-off costs several times the join itself on large files: the tab
    measures it only when "measure" is ticked, as the command line does with --report."""
    def refuse(*a, **k):
        raise AssertionError("the round-off was measured")
    for where in ("lora_merge_ext.concat_stream", "lora_merge_ext.merge"):  # streamed, or merged in memory
        monkeypatch.setattr(f"{where}.concat_round_off", refuse)
    out = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[1.0, 0.3], name="quick"))
    assert not out.report.measured and [r.module for r in out.report.rows] == sorted(deltas(out.path))
    assert "(not measured)" in out.summary_markdown() and "largest relative error" not in out.summary_markdown()
    assert out.as_json()["report"] == {"measured": False,
                                       "rows": [{"module": r.module, "rank": 8} for r in out.report.rows]}
    da, db, dm = deltas(lora_dir / "a.safetensors"), deltas(lora_dir / "b.safetensors"), deltas(out.path)
    for name, delta in dm.items():  # the same exact join as a measured one: fp16 rounding and no more
        want = (da[name] + 0.3 * db[name]).double()
        assert 0.0 < float((delta.double() - want).norm() / want.norm()) < 1e-3
    svd = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], mode="svd", rank=3, name="s"))
    assert svd.report.measured  # add and svd are always measured, ticked or not


def test_svd_merge_respects_the_rank_and_reports_every_module(service):
    out = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], mode="svd", rank=3, name="s3"))
    assert out.ranks == (3,) and out.mode == "svd"
    assert len(out.report.rows) == 8
    assert all(0.0 < r.error < 1.0 for r in out.report.rows)
    summary = out.as_json()["report"]
    assert summary["max_error"] == pytest.approx(max(r.error for r in out.report.rows))


def test_dynamic_rank_keeps_an_energy_fraction_under_the_rank_cap(service):
    full = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], mode="svd", rank=8, name="full"))
    dyn = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], mode="svd", rank=8, energy=0.5,
                                     name="dyn"))
    assert max(full.ranks) == 8
    assert max(dyn.ranks) < 8
    assert all(r.error > 1e-3 for r in dyn.report.rows)


def test_lbw_strings_reach_the_merge(service, lora_dir):
    no_in01 = "1,0," + ",".join(["1"] * 15)  # 17 values: BASE, IN01 (down_blocks_0_attentions_0), …
    out = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], lbw=["", no_in01], name="lbw",
                                     dtype="fp32"))
    da, db, dm = deltas(lora_dir / "a.safetensors"), deltas(lora_dir / "b.safetensors"), deltas(out.path)
    for name in da:
        expected = da[name] if "attentions_0_" in name else da[name] + db[name]
        torch.testing.assert_close(dm[name], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "sub/dir", "a\\b", "..", "", "x:y"])
def test_bad_output_names_are_refused_before_merging(service, lora_dir, name):
    before = listing(lora_dir.parent)
    calls = []
    with pytest.raises(LoraMergeError):
        service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name=name),
                      progress=lambda *a: calls.append(a))
    assert calls == []
    assert listing(lora_dir.parent) == before


def test_one_subfolder_is_allowed_and_created(service, lora_dir):
    out = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="mix", subfolder="merged"))
    assert out.path == (lora_dir / "merged" / "mix.safetensors").resolve()
    assert out.label == "merged/mix.safetensors"
    assert "merged" in service.subfolders()
    assert "merged/mix.safetensors" in service.library.labels()


def test_names_with_two_extensions_are_checked_at_saving_as_they_were_at_first(service, lora_dir):
    """The rule is checked again when saving, on the same file name (not on the name less one extension)."""
    out = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="x.ckpt.safetensors"))
    assert out.path == (lora_dir / "x.ckpt.safetensors").resolve()
    service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="y"))
    out = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="y.safetensors.safetensors"))
    assert out.path == (lora_dir / "y.safetensors.safetensors").resolve()


def test_a_missing_output_folder_is_created_with_its_subfolder(tmp_path, lora_dir):
    new = tmp_path / "new" / "Lora"
    s = MergeService(LoraLibrary.of(new, lora_dir))
    out = s.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="mix", subfolder="merged"))
    assert out.path == (new / "merged" / "mix.safetensors").resolve() and out.path.is_file()


def test_an_output_folder_that_cannot_be_created_is_a_one_line_error(tmp_path, lora_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    s = MergeService(LoraLibrary.of(blocker / "Lora", lora_dir))
    with pytest.raises(LoraMergeError, match="cannot create the folder"):
        s.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="mix", subfolder="merged"))


def test_a_failed_save_leaves_no_new_folder_behind(tmp_path, lora_dir):
    """The file system refuses a 300-byte file name only when the file is written: the folders made
    for it are removed again, and the error says why."""
    new = tmp_path / "new" / "Lora"
    s = MergeService(LoraLibrary.of(new, lora_dir))
    with pytest.raises(LoraMergeError, match="longer than"):
        s.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="n" * 300, subfolder="merged"))
    assert not (tmp_path / "new").exists()
    with pytest.raises(LoraMergeError, match="longer than"):
        s.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="n" * 300))
    assert not (tmp_path / "new").exists()


def test_a_failed_save_keeps_a_new_folder_another_merge_is_writing_into(service, lora_dir):
    """Merge B is still computing into the new sub-folder "shared" (its file not begun yet) when
    merge A into the same folder fails: the folder stays, and B's file lands in it."""
    started, release, results = threading.Event(), threading.Event(), {}

    def slow(done, total, module):
        started.set()
        release.wait(30)

    def merge_b():
        try:
            results["b"] = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], mode="svd", rank=2,
                                                      name="svd_b", subfolder="shared"), progress=slow)
        except Exception as exc:  # pragma: no cover - reported below
            results["b"] = exc

    worker = threading.Thread(target=merge_b)
    worker.start()
    try:
        assert started.wait(30)
        with pytest.raises(LoraMergeError, match="longer than"):
            service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="n" * 300,
                                       subfolder="shared"))
        assert (lora_dir / "shared").is_dir()
    finally:
        release.set()
        worker.join(60)
    assert not isinstance(results["b"], Exception), results["b"]
    assert results["b"].path == (lora_dir / "shared" / "svd_b.safetensors").resolve() and results["b"].path.is_file()


def test_an_existing_file_is_replaced_only_with_overwrite(service, lora_dir):
    req = MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="mix")
    first = service.merge(req)
    old = file_bytes(first.path)
    with pytest.raises(LoraMergeError, match="already exists"):
        service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[2, 1], name="mix"))
    assert file_bytes(first.path) == old
    second = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[2, 1], name="mix",
                                        overwrite=True))
    assert second.path == first.path and file_bytes(first.path) != old
    assert second.sha256 != first.sha256


def test_an_input_is_never_replaced(service, lora_dir):
    old = file_bytes(lora_dir / "a.safetensors")
    for name in ("a", "a.safetensors"):
        with pytest.raises(LoraMergeError, match="one of the inputs"):
            service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name=name, overwrite=True))
    assert file_bytes(lora_dir / "a.safetensors") == old


def test_inputs_outside_the_lora_folders_are_refused(service, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    make_lora(elsewhere / "c.safetensors", rank=4, seed=3, keep=SMALL)
    for spec in (str(elsewhere / "c.safetensors"), "../elsewhere/c.safetensors"):
        with pytest.raises(LoraMergeError, match="outside the Lora folders"):
            service.merge(MergeRequest(inputs=["a.safetensors", spec], name="mix"))
    with pytest.raises(LoraMergeError, match="not found"):
        service.merge(MergeRequest(inputs=["a.safetensors", "missing.safetensors"], name="mix"))


def test_mixing_sd1_and_sdxl_is_refused_before_merging(service, lora_dir):
    make_lora(lora_dir / "xl.safetensors", spec="sdxl_lora", rank=4, seed=4, keep=SDXL_SMALL)
    service.refresh()
    assert service.describe("xl.safetensors").family == "sdxl"
    calls = []
    with pytest.raises(LoraMergeError, match="cannot merge SD1 and SDXL"):
        service.merge(MergeRequest(inputs=["a.safetensors", "xl.safetensors"], name="mixed"),
                      progress=lambda *a: calls.append(a))
    assert calls == [] and not (lora_dir / "mixed.safetensors").exists()


def test_an_input_chosen_twice_and_too_few_inputs_are_refused(service):
    with pytest.raises(LoraMergeError, match="chosen twice"):
        service.merge(MergeRequest(inputs=["a.safetensors", "a.safetensors"], name="x"))
    with pytest.raises(LoraMergeError, match="at least 2"):
        service.merge(MergeRequest(inputs=["a.safetensors", ""], name="x"))


def test_empty_form_rows_are_skipped_with_their_values(service, lora_dir):
    out = service.merge(MergeRequest(inputs=["a.safetensors", "", "b.safetensors"], weights=[1.0, 5.0, 0.0],
                                     name="rows", dtype="fp32"))
    da, dm = deltas(lora_dir / "a.safetensors"), deltas(out.path)
    for name in da:
        torch.testing.assert_close(dm[name], da[name], rtol=1e-5, atol=1e-6)


def test_bad_numbers_are_refused(service):
    with pytest.raises(LoraMergeError, match="weight"):
        service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=["x", 1], name="n"))
    with pytest.raises(LoraMergeError, match="rank"):
        service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], mode="svd", rank=0, name="n"))
    with pytest.raises(LoraMergeError, match="dtype"):
        service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], dtype="int8", name="n"))
    with pytest.raises(LoraMergeError, match="cuda|CUDA"):
        if torch.cuda.is_available():
            raise LoraMergeError("cuda present: nothing to refuse")
        service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], device="cuda", name="n"))


def _tensor_sha(path):
    lora = load_lora(path)
    h = hashlib.sha256()
    for name in sorted(lora.modules):
        m = lora.modules[name]
        h.update(m.down.numpy().tobytes())
        h.update(m.up.numpy().tobytes())
    return h.hexdigest()


def test_two_merges_started_at_once_do_not_corrupt_each_other(service, lora_dir):
    jobs = {"j1": MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[1, 2], name="j1"),
            "j2": MergeRequest(inputs=["a.safetensors", "b.safetensors"], mode="svd", rank=3, name="j2")}
    barrier = threading.Barrier(len(jobs))
    results, errors = {}, []

    def run(key):
        try:
            barrier.wait()
            results[key] = service.merge(jobs[key])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # the same merges one after the other, in another folder, give the same files
    alone = lora_dir.parent / "alone"
    alone.mkdir()
    for f in ("a.safetensors", "b.safetensors"):
        (alone / f).write_bytes((lora_dir / f).read_bytes())
    sequential = MergeService(LoraLibrary.of(alone))
    for key, req in jobs.items():
        ref = sequential.merge(req)
        assert results[key].sha256 == ref.sha256
        assert _tensor_sha(results[key].path) == _tensor_sha(ref.path)


def test_racing_merges_to_one_name_write_exactly_one_whole_file(service, lora_dir):
    n = 3
    barrier = threading.Barrier(n)
    done, refused = [], []

    def run(weight):
        barrier.wait()
        try:
            done.append(service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[weight, 1],
                                                   name="race")))
        except LoraMergeError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=run, args=(w,)) for w in (1.0, 2.0, 3.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 1 and len(refused) == n - 1
    assert all("exists" in r for r in refused)
    assert load_lora(lora_dir / "race.safetensors").metadata["sshs_model_hash"] == done[0].sha256


def test_refresh_lists_new_files_and_subfolders(service, lora_dir):
    assert service.refresh() == ["a.safetensors", "b.safetensors"]
    (lora_dir / "styles").mkdir()
    make_lora(lora_dir / "styles" / "c.safetensors", rank=2, seed=5, keep=SMALL)
    (lora_dir / "notes.txt").write_text("not a LoRA")
    assert service.refresh() == ["a.safetensors", "b.safetensors", "styles/c.safetensors"]
    assert service.subfolders() == ["", "styles"]
    assert service.describe("styles/c.safetensors").ranks == (2,)


def test_a_second_folder_is_read_but_never_written(tmp_path, lora_dir):
    extra = tmp_path / "LyCORIS"
    extra.mkdir()
    make_lora(extra / "c.safetensors", rank=4, seed=3, keep=SMALL)
    make_lora(extra / "a.safetensors", rank=4, seed=9, keep=SMALL)
    s = MergeService(LoraLibrary.of(lora_dir, extra))
    labels = s.refresh()
    assert "c.safetensors" in labels and "a.safetensors (LyCORIS)" in labels
    out = s.merge(MergeRequest(inputs=["a.safetensors", "c.safetensors"], name="cross"))
    assert out.path.parent == lora_dir.resolve()


def test_host_hooks_wrap_the_work_and_hear_about_the_file(lora_dir):
    lock = threading.Lock()
    wrapped, written = [], []

    def serialize(fn):
        def run():
            with lock:
                wrapped.append(True)
                return fn()
        return run

    def on_written(path):
        assert lock.locked()  # told inside the host's lock: the host may touch its model safely
        written.append(Path(path))

    s = MergeService(LoraLibrary.of(lora_dir), serialize=serialize, on_written=on_written)
    out = s.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="hooked"))
    assert wrapped == [True] and written == [out.path]


def test_bake_writes_the_joined_file_at_the_chosen_sigma(service, lora_dir):
    joined = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[1.0, 3.0],
                                        name="joined", dtype="fp32"))
    baked = service.bake(joined.label, "1,0", "", "only_a", dtype="fp32")
    assert baked.mode == "realize" and baked.ranks == (4,) and len(baked.layout.components) == 1
    da, dm = deltas(lora_dir / "a.safetensors"), deltas(baked.path)
    for name in da:
        torch.testing.assert_close(dm[name], da[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(LoraMergeError, match="switches every rank off"):
        service.bake(joined.label, "0", "", "nothing")
    with pytest.raises(LoraMergeError, match="one of the inputs"):
        service.bake(joined.label, "1,1", "", "joined", overwrite=True)


def test_refresh_survives_a_folder_link_that_loops(service, lora_dir):
    import os
    (lora_dir / "sub").mkdir()
    try:
        os.symlink(lora_dir, lora_dir / "sub" / "loop", target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not available")
    labels = service.refresh()
    assert "a.safetensors" in labels and len(labels) == len(set(labels)) < 10


def test_an_output_named_like_a_file_of_another_folder_is_refused(tmp_path, lora_dir):
    """With a second Lora folder, a merge named like one of its files would take over that file's
    name in the input lists (an input picked before would then mean the new file)."""
    out_dir = tmp_path / "out"
    s = MergeService(LoraLibrary.of(out_dir, lora_dir))
    for kind in ("merge", "bake"):
        with pytest.raises(LoraMergeError, match=f"'a' is already the file name of a.safetensors in {lora_dir}"):
            if kind == "merge":
                s.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="a"))
            else:
                s.bake("b.safetensors", "1", "", "a")
    assert not out_dir.exists() or not any(out_dir.iterdir())
    first = s.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="ab"))
    again = s.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="ab", overwrite=True))
    assert first.path == again.path  # its own name in the output folder stays usable
    assert s.library.path_of("a.safetensors") == (lora_dir / "a.safetensors")


def test_bake_and_merge_read_the_preset_file_as_it_is_now(service, lora_dir, tmp_path, monkeypatch):
    """A preset added or changed in preset.txt while the tab is open applies at once, as it does for
    the <ljl> tag at generation time: the baked file matches the tag it was built from."""
    import os
    from lora_merge_ext import presets
    from lora_merge_ext.lbw import parse_lbw
    preset_file = tmp_path / "preset.txt"
    preset_file.write_text("OTHER:" + ",".join(["1"] * 17) + "\n")
    monkeypatch.setattr(presets, "DEFAULT_PATH", preset_file)
    joined = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="joined", dtype="fp32"))
    with pytest.raises(LoraMergeError, match="unknown lbw preset 'MINE'"):
        service.bake(joined.label, "1,1", "MINE", "mine")
    for values in (["1", "1"] + ["0"] * 15, ["0", "0.5", "2"] + ["1"] * 14):  # IN01/IN02: the files' blocks
        preset_file.write_text("MINE:" + ",".join(values) + "\n")
        st = preset_file.stat()
        os.utime(preset_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
        baked = service.bake(joined.label, "1,1", "MINE", "mine", overwrite=True, dtype="fp32")
        by_name = service.bake(joined.label, "1,1", ",".join(values), "explicit", overwrite=True, dtype="fp32")
        assert deltas(baked.path).keys() == deltas(by_name.path).keys()
        for name, delta in deltas(baked.path).items():
            torch.testing.assert_close(delta, deltas(by_name.path)[name], rtol=0, atol=0)
    assert parse_lbw("MINE", "sd1", presets.load_presets()) == parse_lbw(",".join(values), "sd1")


def test_an_output_name_another_file_answers_to_is_refused(service, lora_dir):
    """The WebUI files LoRAs by file name whatever the sub-folder, and by alias (ss_output_name): a
    merge or bake that another file already answers to would hide it, or be hidden, in every tag."""
    from lora_merge_ext.safetensors_io import read_state_dict
    from lora_merge_ext.safetensors_write import save_safetensors_atomic
    (lora_dir / "old").mkdir()
    make_lora(lora_dir / "old" / "mix.safetensors", rank=2, seed=5, keep=SMALL)
    tensors, meta = read_state_dict(lora_dir / "b.safetensors")
    save_safetensors_atomic(tensors, {**meta, "ss_output_name": "style"}, lora_dir / "style_v3_final.safetensors")
    (lora_dir / "embedding.pt").write_bytes(b"not read: the name is enough")
    before = sorted(p.relative_to(lora_dir).as_posix() for p in lora_dir.rglob("*"))
    cases = [("mix", "", "file name of old/mix.safetensors"),       # the new file would be hidden
             ("a", "merged", "file name of a.safetensors"),         # it would hide a.safetensors
             ("style", "", "alias of style_v3_final.safetensors"),
             ("embedding", "new", "file name of embedding.pt")]
    for name, sub, why in cases:
        with pytest.raises(LoraMergeError, match=f"'{name}' is already the {why}"):
            service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name=name, subfolder=sub))
        with pytest.raises(LoraMergeError, match=f"'{name}' is already the {why}"):
            service.bake("b.safetensors", "1", "", name, subfolder=sub, overwrite=True)
    assert sorted(p.relative_to(lora_dir).as_posix() for p in lora_dir.rglob("*")) == before
    mine = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="mine", subfolder="merged"))
    again = service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="mine", subfolder="merged",
                                       overwrite=True))
    assert mine.path == again.path == lora_dir / "merged" / "mine.safetensors"  # replacing itself is fine


def _queued(count: int):
    """A host lock that starts no work before count of them are queued (merges queued behind a generation)."""
    lock, queue = threading.Lock(), threading.Barrier(count)

    def serialize(fn):
        def run():
            queue.wait(10)
            with lock:
                return fn()
        return run
    return serialize


def test_merges_queued_to_one_name_in_two_subfolders_write_one_file(lora_dir):
    s = MergeService(LoraLibrary.of(lora_dir), serialize=_queued(2))  # both pass the checks made before the queue
    done, refused = [], []

    def run(sub, bake=False):
        try:
            if bake:
                done.append(s.bake("a.safetensors", "1", "", "twin", subfolder=sub))
            else:
                done.append(s.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], name="twin",
                                                 subfolder=sub)))
        except LoraMergeError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=run, args=("s1",)), threading.Thread(target=run, args=("s2", True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 1 and len(refused) == 1, (done, refused)
    assert "'twin' is already the file name of" in refused[0]
    assert [p for p in listing(lora_dir) if p.endswith("twin.safetensors")] == [done[0].label]


def test_weight_and_lbw_lists_must_fit_the_inputs_or_the_rows(service):
    two = ["a.safetensors", "b.safetensors"]
    with pytest.raises(LoraMergeError, match="got 3 weight values for 2 inputs"):
        service.merge(MergeRequest(inputs=two, weights=[1, 2, 3], name="n"))
    with pytest.raises(LoraMergeError, match="got 3 lbw values for 2 inputs"):
        service.merge(MergeRequest(inputs=two, lbw=["ALL", "", ""], name="n"))
    with pytest.raises(LoraMergeError, match="got 4 weight values for 2 inputs"):
        service.merge(MergeRequest(inputs=["a.safetensors", "", "b.safetensors"], weights=[1, 2, 3, 4], name="n"))


def test_an_empty_weight_box_is_refused_not_read_as_one(service, lora_dir):
    with pytest.raises(LoraMergeError, match="weight of 'b.safetensors' is empty"):
        service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=[1.0, None], name="n"))
    with pytest.raises(LoraMergeError, match="weight of 'a.safetensors' is empty"):
        service.merge(MergeRequest(inputs=["a.safetensors", "b.safetensors"], weights=["  ", 1.0], name="n"))
    assert not (lora_dir / "n.safetensors").exists()


def test_names_the_file_system_cannot_take_are_a_one_line_refusal(service):
    for bad in ("y" * 300 + ".safetensors", "a.safetensors\x00", "sub/" + "z" * 300):
        with pytest.raises(LoraMergeError, match="cannot be looked up|not found") as exc:
            service.merge(MergeRequest(inputs=["a.safetensors", bad], name="n"))
        assert "\n" not in str(exc.value) and "\x00" not in str(exc.value)


def test_a_subfolder_linking_out_of_the_lora_folder_is_not_offered(service, lora_dir, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (lora_dir / "away").symlink_to(outside, target_is_directory=True)
    (lora_dir / "inner").mkdir()
    (lora_dir / "alias").symlink_to(lora_dir / "inner", target_is_directory=True)
    assert service.subfolders() == ["", "alias", "inner"]


def test_a_linked_file_is_described_under_its_own_name(service, lora_dir):
    (lora_dir / "sub").mkdir()
    (lora_dir / "sub" / "link.safetensors").symlink_to(lora_dir / "a.safetensors")
    assert service.describe("a.safetensors").components == (("a", 4),)
    info = service.describe("sub/link.safetensors")
    assert info.path.endswith("link.safetensors") and info.components == (("link", 4),)
