"""Σ changes take effect at once and never go stale; files are read once per version, within a bound
(issue 3, points 4 and 5)."""
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from lora_merge_ext import loading
from host_double.fixtures import (assert_close, assert_differs, assert_identical, host_factory, outputs,  # noqa: F401
                                  sd1_loras, write_join, write_lora)


@pytest.fixture
def lora_dir(tmp_path, sd1_loras):
    """A private copy of the SD1 LoRA set (these tests rewrite files)."""
    target = tmp_path / "Lora"
    shutil.copytree(sd1_loras["J"].parent, target)
    return target


@pytest.fixture
def reads(monkeypatch):
    """Paths of every LoRA file the runtime reads through the core loader."""
    seen = []
    original = loading.load_lora

    def counting(path):
        seen.append(os.path.basename(path))
        return original(path)

    monkeypatch.setattr(loading, "load_lora", counting)
    return seen


def gen(host, prompt, seed=21, **kw):
    return outputs(host.txt2img(prompt, seed=seed, **kw))


def test_sigma_change_applies_at_once_and_back_is_exact(host_factory, lora_dir):
    host = host_factory("sd1", lora_dir=lora_dir)
    plain = gen(host, "x")
    first = gen(host, "x <ljl:J:1,0>")
    second = gen(host, "x <ljl:J:0,1>")
    # every stage changes: text-encoder conds (the host caches them) and UNet layers (the host caches merged weights)
    for stage in ("cond", "uncond", "unet"):
        a = {k: v for k, v in first.items() if k[0] == stage}
        b = {k: v for k, v in second.items() if k[0] == stage}
        assert_differs(a, b)
    assert_close(second, gen(host, "x <lora:B:1>"))
    assert_identical(gen(host, "x <ljl:J:1,0>"), first)
    assert_identical(gen(host, "x"), plain)
    assert_identical(gen(host, "x <ljl:J:1,0>"), first)


def test_conds_follow_sigma_with_the_persistent_cond_cache(host_factory, lora_dir):
    host = host_factory("sd1", lora_dir=lora_dir)
    assert host.opts.persistent_cond_cache
    a = host.txt2img("x <ljl:J:1,0>", seed=1)
    b = host.txt2img("x <ljl:J:0,1>", seed=1)
    ref = host.txt2img("x <lora:B:1>", seed=1)
    assert_close(b.images[0].cond, ref.images[0].cond)
    assert_close(b.images[0].uncond, ref.images[0].uncond)
    assert_differs(a.images[0].cond, b.images[0].cond)


def test_sigma_changes_read_nothing_from_disk(host_factory, lora_dir, reads):
    host = host_factory("sd1", lora_dir=lora_dir)
    from modules import hashes, sd_models
    for i, sigma in enumerate(["1,0", "0,1", "0.5,1", "1*6", "0.1,0.2,0.3,0.4,0.5,0.6", "1,0"]):
        host.txt2img(f"x <ljl:J:{sigma}>", seed=i, enable_hr=True, hr_prompt=f"x <ljl:J:{sigma}:te=0.5>")
    assert reads == ["J.safetensors"]
    assert sd_models.reads == []          # the host never read J's tensors either
    assert len(hashes.computed) <= 1      # the file hash is computed once at most (J has sshs_model_hash)


def test_rewritten_file_is_picked_up(host_factory, lora_dir, reads):
    host = host_factory("sd1", lora_dir=lora_dir)
    before = gen(host, "x <ljl:J:1,0>")
    stat = os.stat(lora_dir / "J.safetensors")
    os.remove(lora_dir / "J.safetensors")
    write_join(lora_dir, "J", [lora_dir / "C.safetensors", lora_dir / "B.safetensors"])
    os.utime(lora_dir / "J.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000))
    after = gen(host, "x <ljl:J:1,0>")
    assert reads == ["J.safetensors", "J.safetensors"]
    assert_differs(before, after)
    assert_close(after, gen(host, "x <lora:C:1>"))


def test_file_cache_honours_lora_in_memory_limit(host_factory, lora_dir, reads):
    host = host_factory("sd1", lora_dir=lora_dir)
    assert host.opts.lora_in_memory_limit == 0       # the host's default: keep one file
    gen(host, "x <ljl:J:1,0> <ljl:K:1,0>")
    gen(host, "x <ljl:J:0,1> <ljl:K:0,1>")          # both files in use: both kept
    assert reads == ["J.safetensors", "K.safetensors"]
    gen(host, "x <ljl:J:1>")                          # K falls out
    gen(host, "x <ljl:K:1>")
    assert reads[2:] == ["K.safetensors"]
    gen(host, "x <ljl:J:1>")
    assert reads[3:] == ["J.safetensors"]
    host.opts.set("lora_in_memory_limit", 3)
    gen(host, "x <ljl:K:1>")
    gen(host, "x <ljl:J:1>")
    gen(host, "x <ljl:K:0.5>")
    assert reads[4:] == ["K.safetensors"]


def test_a_hires_pass_on_another_file_reads_each_file_once(host_factory, lora_dir, reads):
    """Within one generation the files of the pass before are kept: batch after batch, first pass J and
    hires pass K do not read both files again (the host's default lora_in_memory_limit is 0)."""
    host = host_factory("sd1", lora_dir=lora_dir)
    host.txt2img("x <ljl:J:1,0>", seed=1, n_iter=3, enable_hr=True, hr_prompt="x <ljl:K:0,1>")
    assert reads == ["J.safetensors", "K.safetensors"]
    gen(host, "x <ljl:K:1>")  # a new generation: J is let go, as the limit asks
    gen(host, "x <ljl:J:1>")
    assert reads[2:] == ["J.safetensors"]


def test_networks_are_reused_across_batches_and_passes(host_factory, lora_dir, monkeypatch):
    host = host_factory("sd1", lora_dir=lora_dir)
    from lora_merge_ext.webui import activation
    built = []
    original = activation.build_network

    def counting(*args, **kwargs):
        built.append(args[3])
        return original(*args, **kwargs)

    monkeypatch.setattr(activation, "build_network", counting)
    host.txt2img("x <ljl:J:1,0>", seed=1, batch_size=1, n_iter=3, enable_hr=True, hr_prompt="x <ljl:J:0,1>")
    assert built == ["J", "J"]                       # one per Σ, not one per batch or pass
    host.txt2img("x <ljl:J:1,0>", seed=1, enable_hr=True, hr_prompt="x <ljl:J:0,1>")
    assert built == ["J", "J"]


def test_host_layer_cache_would_go_stale_without_a_new_name(host_factory, lora_dir):
    """What the network-name digest guards against: the host re-merges a layer only when
    (name, te, unet, dyn) of the loaded nets changes (A1111_HOST_API.md §2.4)."""
    host = host_factory("sd1", lora_dir=lora_dir)
    first = gen(host, "x <lora:A:1>")
    net = host.networks.loaded_networks[0]
    for module in net.modules.values():                # change the weights in place, same name
        module.up_model.weight.data.mul_(3)
    again = gen(host, "x <lora:A:1>")
    assert_identical(first, again)                    # stale: layers kept the old merge
    for module in net.modules.values():
        module.up_model.weight.data.div_(3)


def test_removing_the_tag_restores_the_plain_model(host_factory, lora_dir):
    host = host_factory("sd1", lora_dir=lora_dir)
    plain = gen(host, "x", seed=2)
    gen(host, "x <ljl:J:0.7,0.2:lbw=MIDD>", seed=2)
    assert host.networks.loaded_networks
    after = gen(host, "x", seed=2)
    assert host.networks.loaded_networks == []
    assert_identical(after, plain)


def test_a_new_checkpoint_gets_new_networks_and_the_old_one_is_let_go(host_factory, lora_dir):
    """After a checkpoint change the tag applies through the new model's layers, and nothing the
    runtime keeps holds the old model's layers in memory."""
    import gc
    import weakref

    from host_double.fixtures import SPECS, keep_of
    from host_double.harness import spec_rows

    host = host_factory("sd1", lora_dir=lora_dir)
    from fake_model import FakeSdModel                     # the host's modules, importable while it runs
    from modules import script_callbacks, shared
    gen(host, "x <ljl:J:1,0>")
    old_layers = [weakref.ref(m.sd_module) for net in host.networks.loaded_networks for m in net.modules.values()]
    assert old_layers
    shared.sd_model = FakeSdModel("sd1", spec_rows(SPECS["sd1"][0], keep_of("sd1")))
    with torch.no_grad():
        for p in shared.sd_model.parameters():
            p.mul_(1.5)                                    # another checkpoint of the same architecture
    shared.sd_model.sd_checkpoint_info = SimpleNamespace(name="other-sd1.safetensors", shorthash="89abcdef01")
    script_callbacks.model_loaded_callback(shared.sd_model)
    tagged = gen(host, "x <ljl:J:1,0>")
    new_layers = {id(m) for m in shared.sd_model.modules()}
    assert all(id(m.sd_module) in new_layers for net in host.networks.loaded_networks for m in net.modules.values())
    gc.collect()
    assert all(ref() is None for ref in old_layers)
    assert_close(tagged, gen(host, "x <lora:A:1>"))


def _reload_ui():
    """What the host does on "Reload UI": scripts unloaded and loaded again; the processing
    classes, and so their cond caches, stay."""
    from modules import extra_networks, script_callbacks, scripts
    script_callbacks.script_unloaded_callback()
    scripts.load_scripts(())
    for runner in scripts.create_script_runners():
        runner.setup_ui()
    extra_networks.initialize()
    extra_networks.register_default_extra_networks()
    script_callbacks.before_ui_callback()


def _stage(outs, stage):
    return {k: v for k, v in outs.items() if k[0] == stage}


def test_a_file_rewritten_across_a_ui_reload_gives_new_conds(host_factory, lora_dir):
    """The runtime's memory of which networks a tag text gave is reset by a reload; the host's cond
    cache is not, so a tag text it does not remember must not reuse the host's conds."""
    host = host_factory("sd1", lora_dir=lora_dir)
    before = gen(host, "x <ljl:J:1,0>")
    os.remove(lora_dir / "J.safetensors")
    write_join(lora_dir, "J", [lora_dir / "C.safetensors", lora_dir / "B.safetensors"])
    _reload_ui()
    after = gen(host, "x <ljl:J:1,0>")
    assert_differs(_stage(before, "cond"), _stage(after, "cond"))
    assert_close(after, gen(host, "x <lora:C:1>"))


def test_an_img2img_run_between_hires_generations_leaves_no_stale_hires_conds(host_factory, lora_dir):
    """img2img has no hires cond caches of its own; when its run finds J rewritten, the txt2img hires
    caches must be emptied too, or the next hires pass reuses conds of the old file."""
    host = host_factory("sd1", lora_dir=lora_dir)

    def hires_conds(prompt):
        p = host.processing(prompt=prompt, seed=1, enable_hr=True)
        host.processing_module.process_images(p)
        return p.c[0], p.hr_c[0]

    hires_conds("a <ljl:J:1,0>")
    os.remove(lora_dir / "J.safetensors")
    write_join(lora_dir, "J", [lora_dir / "C.safetensors", lora_dir / "B.safetensors"])
    host.img2img("a <ljl:J:1,0>", seed=1)
    first, hires = hires_conds("a <ljl:J:1,0>")
    want_first, want_hires = hires_conds("a <lora:C:1>")
    assert_close(first, want_first)
    assert_close(hires, want_hires)


def test_a_hires_tag_text_forgotten_among_many_others_gives_new_conds(host_factory, lora_dir):
    host = host_factory("sd1", lora_dir=lora_dir)
    from modules import processing
    from lora_merge_ext.webui.runtime_state import MAX_REMEMBERED_PROMPTS, current

    def hires_conds(hr_prompt):
        p = host.processing(prompt="a", seed=1, enable_hr=True, hr_prompt=hr_prompt)
        processing.process_images(p)
        return p.hr_c[0]

    before = hires_conds("b <ljl:J:1,0>")
    for i in range(MAX_REMEMBERED_PROMPTS):  # the tag texts of a large X/Y/Z grid, say
        current().outcome_changed((("K", str(i)),), ("K",))
    os.remove(lora_dir / "J.safetensors")
    write_join(lora_dir, "J", [lora_dir / "C.safetensors", lora_dir / "B.safetensors"])
    after = hires_conds("b <ljl:J:1,0>")
    assert_differs(before, after)
    assert_close(after, hires_conds("b <lora:C:1>"))
