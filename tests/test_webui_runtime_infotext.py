"""Infotext: the tag stays in the prompt, "LJL hashes" records the file, and pasting the infotext
reproduces the image, also where the file has another name (issue 3, point 6)."""
import shutil

from safetensors import safe_open

from host_double.fixtures import assert_close, assert_identical, host_factory, outputs, sd1_loras  # noqa: F401


def sshs_hash(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()["sshs_model_hash"]


def test_infotext_keeps_the_tag_and_records_the_hash(host_factory, sd1_loras):
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    res = host.txt2img("a cat <ljl:J:0.5,1:lbw=MIDD> <lora:C:0.5>", seed=9)
    info = res.infotexts[0]
    assert info.splitlines()[0] == "a cat <ljl:J:0.5,1:lbw=MIDD> <lora:C:0.5>"
    params = host.paste(info)
    assert params["LJL hashes"] == f"J: {sshs_hash(sd1_loras['J'])[:12]}"
    lora_hash = host.paste(host.txt2img("a cat <lora:J:1>", seed=9).infotexts[0])["Lora hashes"]
    assert lora_hash == params["LJL hashes"]          # the same hash <lora:J> records
    assert "C: " in params["Lora hashes"]


def test_pasting_the_infotext_reproduces_the_image(host_factory, sd1_loras):
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    res = host.txt2img("a cat <ljl:J:1,0>", seed=9, enable_hr=True, hr_prompt="a cat <ljl:K:0.5>")
    host.txt2img("something else <ljl:J:0,1>", seed=1)
    params = host.paste(res.infotexts[0])
    assert params["Hires prompt"] == "a cat <ljl:K:0.5>"
    assert set(params["LJL hashes"].split(", ")) == {f"J: {sshs_hash(sd1_loras['J'])[:12]}",
                                                     f"K: {sshs_hash(sd1_loras['K'])[:12]}"}
    assert_identical(outputs(host.txt2img_from_params(params)), outputs(res))


def test_paste_on_another_install_uses_the_local_name(host_factory, sd1_loras, tmp_path):
    first = host_factory("sd1", lora_dir=sd1_loras["J"].parent)
    res = first.txt2img("a cat <ljl:J:0.5,1>", seed=4, enable_hr=True, hr_prompt="a dog <ljl:J:1,0>")
    info, expected = res.infotexts[0], outputs(res)
    first.close()
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(sd1_loras["J"], other / "my_join.safetensors")
    second = host_factory("sd1", lora_dir=other)
    params = second.paste(info)
    assert params["Prompt"] == "a cat <ljl:my_join:0.5,1>"
    assert params["Hires prompt"] == "a dog <ljl:my_join:1,0>"
    assert_close(outputs(second.txt2img_from_params(params)), expected)


def test_hash_field_follows_the_lora_setting(host_factory, sd1_loras):
    host = host_factory("sd1", lora_dir=sd1_loras["J"].parent, settings={"lora_add_hashes_to_infotext": False})
    res = host.txt2img("a cat <ljl:J:1>", seed=1)
    assert "LJL hashes" not in res.infotexts[0]
