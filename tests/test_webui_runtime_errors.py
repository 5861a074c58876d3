"""Bad <ljl> tags are reported in the console and the UI, skipped, and the generation goes on
(issue 3, point 7); the Lora extension being off is said clearly (point 1)."""
import warnings

import pytest

from host_double.fixtures import assert_close, assert_identical, host_factory, outputs, sd1_loras  # noqa: F401


@pytest.fixture
def sd1(host_factory, sd1_loras):
    return host_factory("sd1", lora_dir=sd1_loras["J"].parent)


BAD_TAGS = [
    ("<ljl:Nope:1>", "no LoRA named 'Nope'"),
    ("<ljl:J:1,0,1>", "has 3 values; expected"),
    ("<ljl:J:1,abc>", "'abc' is not a number"),
    ("<ljl:J:1:te=abc>", "te='abc' is not a number"),
    ("<ljl:J:1:lbw=NOPE>", "unknown lbw preset 'NOPE'"),
    ("<ljl:J:1:lbw=1,1,1,1,1,1,1,1,1,1,1,1>", "SD1 needs 17 or 26"),
    ("<ljl:J:1:0.5>", "unexpected item '0.5'"),
    ("<ljl:J:1:dyn=2>", "dyn= is not supported"),
    ("<ljl:J:lbwe=ATTNDEEPOFF>", "lbwe= is a lora-block-weight option that <ljl> does not support"),
    ("<ljl:J:1e39,0>", "values too large for the model's float32; use smaller values"),
    ("<ljl:J:1,0:lbw=1,X,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1:x=1e39>", "values too large"),
    ("<ljl:J:C=1>", "C"),
]


@pytest.mark.parametrize("tag,words", BAD_TAGS)
def test_bad_tag_is_reported_and_skipped(sd1, capsys, tag, words):
    res = sd1.txt2img(f"x {tag} <ljl:J:0,1>", seed=3, n_iter=2)
    console = capsys.readouterr().out
    lines = [line for line in console.splitlines() if line.startswith("[LJL]")]
    assert len(lines) == 1, console                       # told once per generation, not once per batch
    assert tag in lines[0] and "skipped" in lines[0] and words in lines[0]
    assert tag in res.comments and words in res.comments  # the comments shown under the image
    ref = sd1.txt2img("x <lora:B:1>", seed=3, n_iter=2)
    for i in range(2):
        assert_close(outputs(res, i), outputs(ref, i))     # the good tag still applies
    assert tag in res.all_prompts[0]                       # the prompt keeps what the user wrote


def test_bad_tag_alone_leaves_the_plain_model(sd1):
    plain = outputs(sd1.txt2img("x", seed=2))
    assert_identical(outputs(sd1.txt2img("x <ljl:J:1,2,3>", seed=2)), plain)


def test_gradio_warning_when_gradio_is_loaded(sd1):
    gradio = pytest.importorskip("gradio")
    assert hasattr(gradio, "Warning")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sd1.txt2img("x <ljl:Missing:1>", seed=1)
    assert any("LJL" in str(w.message) and "Missing" in str(w.message) for w in caught)


def test_unknown_name_is_found_after_the_file_appears(sd1, sd1_loras):
    import shutil
    res = sd1.txt2img("x <ljl:Late:0,1>", seed=1)
    assert "no LoRA named 'Late'" in res.comments
    shutil.copy(sd1_loras["J"], sd1.lora_dir / "Late.safetensors")
    try:
        late = sd1.txt2img("x <ljl:Late:0,1>", seed=1)        # rescanned by name, like <lora>
        assert late.comments == ""
        assert_close(outputs(late), outputs(sd1.txt2img("x <lora:B:1>", seed=1)))
    finally:
        (sd1.lora_dir / "Late.safetensors").unlink()
        sd1.refresh_loras()


def test_lora_extension_disabled(host_factory, sd1_loras, capsys):
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent, lora_enabled=False)
    console = capsys.readouterr().out
    assert "[LJL] <ljl:…> prompt tags are disabled: the built-in Lora extension is disabled" in console
    import sys
    assert "networks" not in sys.modules
    plain = outputs(host.txt2img("x", seed=1))
    res = host.txt2img("x <ljl:J:1>", seed=1)
    assert_identical(outputs(res), plain)
    assert "built-in Lora extension is disabled" in res.comments
    assert "ljl" in host.extra_networks.extra_network_registry   # the extension itself loaded


def test_a_failing_tag_does_not_stop_the_others(sd1, monkeypatch, capsys):
    from lora_merge_ext.webui import activation
    original = activation.build_network

    def flaky(host, sd_model, entry, name, *args, **kwargs):
        if name == "K":
            raise RuntimeError("simulated host failure")
        return original(host, sd_model, entry, name, *args, **kwargs)

    monkeypatch.setattr(activation, "build_network", flaky)
    res = sd1.txt2img("x <ljl:K:1> <ljl:J:0,1>", seed=1)
    assert "RuntimeError: simulated host failure" in res.comments
    assert_close(outputs(res), outputs(sd1.txt2img("x <lora:B:1>", seed=1)))


def test_a_failing_lora_handler_beside_an_ljl_tag(sd1):
    """`<lora:C:1:MIDD>` (the legacy lbw form) makes the built-in handler raise; the host then
    activates it again with [] (A1111_HOST_API.md §3.3), which clears `loaded_networks`, so the
    <ljl> networks of one pass never stack up in the next one."""
    res = sd1.txt2img("x <lora:C:1:MIDD> <ljl:J:0,1>", seed=3, n_iter=3)
    names = [net.name for net in sd1.networks.loaded_networks]
    assert len(names) == 1 and names[0].startswith("J@ljl:")
    ref = sd1.txt2img("x <lora:B:1>", seed=3, n_iter=3)
    for i in range(3):
        assert_close(outputs(res, i), outputs(ref, i))
    plain = outputs(sd1.txt2img("x", seed=3))
    assert_identical(outputs(sd1.txt2img("x <lora:C:1:MIDD>", seed=3)), plain)


def test_a_listed_file_that_vanished_is_a_one_line_report(host_factory, sd1_loras, tmp_path, capsys):
    import shutil
    lora_dir = tmp_path / "Lora"
    shutil.copytree(sd1_loras["J"].parent, lora_dir)
    host = host_factory("sd1", lora_dir=lora_dir)
    host.txt2img("x <ljl:K:1>", seed=1)                      # both listed by the host
    (lora_dir / "K.safetensors").unlink()                    # gone before the next generation reads it
    capsys.readouterr()
    res = host.txt2img("x <ljl:K:1> <ljl:J:0,1>", seed=1)
    assert "K.safetensors: cannot read file" in res.comments
    assert "Error" not in res.comments and "Traceback" not in capsys.readouterr().err
    assert_close(outputs(res), outputs(host.txt2img("x <lora:B:1>", seed=1)))


def test_a_pass_run_without_the_hook_says_the_tags_were_skipped(sd1, capsys):
    """Another extension's pass (ADetailer's, say) with its own script list never calls the hook that
    applies <ljl>: the tags are reported as skipped instead of vanishing without a word."""
    import copy

    from modules import processing
    p = sd1.processing(prompt="x <ljl:J:1> <lora:C:0.5>", seed=3)
    p.scripts = copy.copy(p.scripts)
    p.scripts.alwayson_scripts = [s for s in p.scripts.alwayson_scripts if not getattr(s, "is_ljl_hook", False)]
    res = processing.process_images(p)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[LJL]")]
    assert len(lines) == 1 and "<ljl> tags skipped" in lines[0] and "ljl_merge" in lines[0]
    assert "<ljl> tags skipped" in res.comments
    assert_close(outputs(res), outputs(sd1.txt2img("x <lora:C:0.5>", seed=3)))   # the rest still applies
    ok = sd1.txt2img("x <ljl:J:1>", seed=3)                                     # the usual pass: no message
    assert "LJL" not in ok.comments


def test_a_module_that_fails_on_its_layer_is_counted_under_the_tag_name(host_factory, tmp_path):
    """An SD1 join on an SDXL model: attn2_to_k of down_blocks_1 exists there with another shape, so the
    host's weight update fails for it.  The host's "Networks with errors" names `<ljl:J>` once, whatever
    the Σ, not the internal network name, which changes with every Σ."""
    import re
    from host_double.fixtures import keep_of, write_join, write_lora
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    wanted = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    keep = lambda n: n == wanted  # noqa: E731
    a = write_lora(lora_dir, "A", "sd1", rank=4, seed=1, keep=lambda n: keep(n) or keep_of("sd1")(n))
    b = write_lora(lora_dir, "B", "sd1", rank=2, seed=2, keep=lambda n: keep(n) or keep_of("sd1")(n))
    write_join(lora_dir, "J", [a, b])
    host = host_factory("sdxl", lora_dir=lora_dir)
    plain = host.txt2img("x <lora:A:1>", seed=11)
    assert re.search(r"Networks with errors: A \(\d+\)", plain.comments), plain.comments  # the host's own count
    for sigma in ("1,0", "0.5,1"):
        res = host.txt2img(f"x <ljl:J:{sigma}>", seed=11)
        assert re.search(r"Networks with errors: <ljl:J> \(\d+\)\n", res.comments), res.comments
        assert "@ljl:" not in res.comments
