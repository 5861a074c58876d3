"""<ljl:…> on the host's built-in Lora machinery gives the same layer outputs as the equivalent
<lora:…> tags (issue 3, point 3), on SD1.5 and SDXL layers, driven through the WebUI test double."""
import pytest
import torch

from lora_merge_ext import api
from host_double.api_codec import decode_images
from host_double.fixtures import (assert_close, assert_differs, assert_identical, host_factory, outputs,  # noqa: F401
                                  sd1_loras, sdxl_loras)


def realized(lora_dir, name, source, sigma, lbw=None):
    """`<lora:name:1>` that equals `<ljl:source:sigma:lbw=…>`: the core's realize, saved as a plain file."""
    lora = api.realize(str(source), sigma, lbw=lbw)
    api.save(lora, lora_dir / f"{name}.safetensors", overwrite=True)


@pytest.fixture
def sd1(host_factory, sd1_loras):
    return host_factory("sd1", lora_dir=sd1_loras["J"].parent)


@pytest.fixture
def sdxl(host_factory, sdxl_loras):
    return host_factory("sdxl", lora_dir=sdxl_loras["J"].parent)


def gen(host, prompt, **kw):
    return outputs(host.txt2img(prompt, seed=kw.pop("seed", 11), **kw))


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ljl_equals_lora_tags(family, request):
    host = request.getfixturevalue(family)
    plain = gen(host, "a castle")
    whole = gen(host, "a castle <ljl:J:1>")
    assert_differs(whole, plain)
    assert_close(whole, gen(host, "a castle <lora:J:1>"))
    assert_close(whole, gen(host, "a castle <lora:A:1><lora:B:1>"))
    assert_close(gen(host, "a castle <ljl:J:1,0>"), gen(host, "a castle <lora:A:1>"))
    assert_close(gen(host, "a castle <ljl:J:0,1>"), gen(host, "a castle <lora:B:1>"))
    assert_close(gen(host, "a castle <ljl:J:0.5,1>"), gen(host, "a castle <lora:A:0.5><lora:B:1>"))
    assert_identical(gen(host, "a castle <ljl:J:0>"), plain)


def test_per_rank_named_and_multiplier_forms(sd1):
    # A has rank 4, B rank 2: eight numbers would be wrong, six are per rank.
    assert_close(gen(sd1, "x <ljl:J:1*4,0*2>"), gen(sd1, "x <lora:A:1>"))
    assert_close(gen(sd1, "x <ljl:J:B=1>"), gen(sd1, "x <lora:B:1>"))
    assert_close(gen(sd1, "x <ljl:J:A=0.5,B=1>"), gen(sd1, "x <lora:A:0.5><lora:B:1>"))
    assert_close(gen(sd1, "x <ljl:J:1:te=0.5:unet=2>"), gen(sd1, "x <lora:J:0.5:2>"))
    assert_close(gen(sd1, "x <ljl:J:1:te=0.25>"), gen(sd1, "x <lora:J:te=0.25>"))  # unet defaults to te
    assert_close(gen(sd1, "x <ljl:J>"), gen(sd1, "x <lora:J:1>"))


def test_a_component_named_like_an_option_can_lead_a_named_vector(host_factory, sd1_loras, tmp_path):
    """Components take their inputs' file names, so a join of x.safetensors and face.safetensors has a
    component `x`: `x=1,face=0` is its Σ, not the x= option."""
    import shutil
    from host_double.fixtures import write_join
    folder = tmp_path / "Lora"
    folder.mkdir()
    shutil.copyfile(sd1_loras["A"], folder / "x.safetensors")
    shutil.copyfile(sd1_loras["B"], folder / "face.safetensors")
    write_join(folder, "XJ", [folder / "x.safetensors", folder / "face.safetensors"])
    host = host_factory("sd1", lora_dir=folder)
    assert_close(gen(host, "p <ljl:XJ:x=1,face=0>"), gen(host, "p <lora:x:1>"))
    assert_close(gen(host, "p <ljl:XJ:x=0.5,face=1:te=0.25:unet=1>"),
                 gen(host, "p <lora:x:0.125:0.5><lora:face:0.25:1>"))


def test_per_rank_vector_on_a_plain_lora(sd1, sd1_loras):
    realized(sd1.lora_dir, "A_half", sd1_loras["A"], "1,0,-0.5,2")
    sd1.refresh_loras()
    assert_close(gen(sd1, "x <ljl:A:1,0,-0.5,2>"), gen(sd1, "x <lora:A_half:1>"))
    assert_close(gen(sd1, "x <ljl:A:0.3>"), gen(sd1, "x <lora:A:0.3>"))


@pytest.mark.parametrize("family,lbw", [("sd1", "1,0,1,1,1,1,1,1,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,0.25"),
                                        ("sd1", "MIDD"), ("sdxl", "0.5,1,0,1,1,1,0.25,0,1,1,1,1,1,1,1,1,1,1,1,2"),
                                        ("sdxl", "OUTALL")])
def test_lbw_equals_realized_file(family, lbw, request):
    host = request.getfixturevalue(family)
    loras = request.getfixturevalue(f"{family}_loras")
    realized(host.lora_dir, "R", loras["J"], "0.5,1", lbw=lbw)
    host.refresh_loras()
    tagged = gen(host, f"x <ljl:J:0.5,1:lbw={lbw}>")
    assert_close(tagged, gen(host, "x <lora:R:1>"))
    assert_differs(tagged, gen(host, "x <ljl:J:0.5,1>"))


def test_w_and_x_work_as_in_lora_block_weight(sd1, sd1_loras):
    """w= is lbw=; x= is the value of X (X+d, X-d) in the spec, so one spec can be scaled from the tag."""
    spec = "1,X,X-0.5,1,1,1,1,1,X+1,1,1,1,1,1,1,1,1"
    realized(sd1.lora_dir, "R", sd1_loras["J"], "0.5,1", lbw=spec.replace("X-0.5", "1.5").replace("X+1", "3")
             .replace("X", "2"))
    sd1.refresh_loras()
    tagged = gen(sd1, f"x <ljl:J:0.5,1:w={spec}:x=2>")
    assert_close(tagged, gen(sd1, "x <lora:R:1>"))
    assert_differs(tagged, gen(sd1, f"x <ljl:J:0.5,1:lbw={spec}>"))   # X is 1 without x=


def test_beside_lora_tags_and_several_ljl_tags(sd1):
    assert_close(gen(sd1, "x <lora:C:0.7> <ljl:J:0,1>"), gen(sd1, "x <lora:C:0.7><lora:B:1>"))
    assert_close(gen(sd1, "x <ljl:J:0,1> <lora:C:0.7>"), gen(sd1, "x <lora:C:0.7><lora:B:1>"))
    assert_close(gen(sd1, "x <ljl:J:1,0> <ljl:K:0,0.5>"), gen(sd1, "x <lora:A:1><lora:C:0.5>"))
    assert_close(gen(sd1, "x <ljl:J:1,0> <ljl:J:0,1>"), gen(sd1, "x <lora:A:1><lora:B:1>"))


def test_batches_and_iterations(sd1):
    tagged = sd1.txt2img("x <ljl:J:0.5,1>", seed=5, batch_size=2, n_iter=2)
    plain = sd1.txt2img("x <lora:A:0.5><lora:B:1>", seed=5, batch_size=2, n_iter=2)
    assert len(tagged.images) == 4
    for i in range(4):
        assert_close(outputs(tagged, i), outputs(plain, i))
    assert_differs(outputs(tagged, 0), outputs(tagged, 1))  # seeds differ


def test_hires_pass_uses_its_own_tag(sd1):
    kw = dict(enable_hr=True, batch_size=1, n_iter=2)
    tagged = sd1.txt2img("x <ljl:J:1,0>", seed=7, hr_prompt="x <ljl:J:0,1>", **kw)
    plain = sd1.txt2img("x <lora:A:1>", seed=7, hr_prompt="x <lora:B:1>", **kw)
    for i in range(2):
        assert tagged.images[i].hires is not None
        assert_close(outputs(tagged, i), outputs(plain, i))
    same = sd1.txt2img("x <ljl:J:0.5,1>", seed=7, **kw)
    same_plain = sd1.txt2img("x <lora:A:0.5><lora:B:1>", seed=7, **kw)
    assert_close(outputs(same), outputs(same_plain))


def test_functional_mode(host_factory, sd1_loras):
    """With lora_functional the layers add the networks' outputs in forward: the model's weights are
    never changed, and <ljl> still equals the plain tags."""
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent, settings={"lora_functional": True})
    weights = {k: v.clone() for k, v in host.sd_model.state_dict().items()}
    tagged = gen(host, "x <ljl:J:0.5,1>")
    assert all(torch.equal(v, weights[k]) for k, v in host.sd_model.state_dict().items())
    assert_close(tagged, gen(host, "x <lora:A:0.5><lora:B:1>"))
    assert_differs(tagged, gen(host, "x"))


def test_through_the_txt2img_api(sd1):
    client = sd1.api_client()
    images = {}
    for prompt in ("x <ljl:J:0.5,1>", "x <lora:A:0.5><lora:B:1>"):
        r = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "seed": 4, "batch_size": 2})
        assert r.status_code == 200, r.text
        images[prompt] = decode_images(r.json()["images"])
    tagged, plain = images.values()
    assert len(tagged) == 2
    for a, b in zip(tagged, plain):
        assert_close(a, b)


def test_an_sd1_file_with_lora_te1_names_applies_as_with_lora(host_factory, tmp_path):
    """SD1 text-encoder modules named lora_te1_ (the host reads them through a fallback) under <ljl>,
    alone and joined with a file of lora_te_ names: the text encoder of both inputs counts."""
    from safetensors.torch import load_file, save_file
    from host_double.fixtures import write_join, write_lora
    root = tmp_path / "Lora"
    root.mkdir()
    plain = write_lora(root, "P", "sd1", rank=2, seed=1)
    source = write_lora(root, "src", "sd1", rank=3, seed=2)
    renamed = root / "T.safetensors"
    save_file({k.replace("lora_te_", "lora_te1_"): v for k, v in load_file(str(source)).items()}, str(renamed),
              metadata={"ss_base_model_version": "sd_v1"})
    assert any(k.startswith("lora_te1_") for k in load_file(str(renamed)))
    write_join(root, "J", [plain, renamed])
    host = host_factory("sd1", lora_dir=root)
    assert_close(gen(host, "a castle <ljl:T:1>"), gen(host, "a castle <lora:T:1>"))
    joined = gen(host, "a castle <ljl:J:1,1>")
    assert_close(joined, gen(host, "a castle <lora:P:1><lora:src:1>"))
    assert_close(gen(host, "a castle <lora:J:1>"), joined)
    assert_close(gen(host, "a castle <ljl:J:0,1>"), gen(host, "a castle <lora:T:1>"))
