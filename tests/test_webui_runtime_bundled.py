"""`<ljl>` tags register their file's bundled embeddings (the trigger words a LoRA carries), as the
built-in Lora does for `<lora>` tags, and the host itself takes them back at the next pass."""
import pytest
import torch
from safetensors.torch import load_file, save_file

from host_double.fixtures import assert_close, host_factory, outputs, write_join, write_lora  # noqa: F401

WIDTHS = {"sd1": {"": 768}, "sdxl": {"clip_l": 768, "clip_g": 1280}}


def _vectors(family: str, seed: int, width_of=None) -> dict:
    gen = torch.Generator().manual_seed(seed)
    widths = width_of or WIDTHS[family]
    return {part: torch.randn(2, w, generator=gen) for part, w in widths.items()}


def _keys(name: str, vectors: dict) -> dict:
    return {(f"bundle_emb.{name}.{part}" if part else f"bundle_emb.{name}.string_to_param.*"): v
            for part, v in vectors.items()}


def _add_to_file(path, tensors: dict) -> None:
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    stored = load_file(str(path))
    stored.update(tensors)
    save_file(stored, str(path), metadata=metadata)


def _loras(root, family: str, vectors: dict):
    root.mkdir(parents=True, exist_ok=True)
    a = write_lora(root, "A", family, rank=4, seed=1)
    b = write_lora(root, "B", family, rank=2, seed=2)
    _add_to_file(a, _keys("trig", vectors))
    write_join(root, "J", [a, b])
    return root


def _embedding_outputs(res) -> dict:
    return {k: v for k, v in outputs(res).items() if k[1].startswith("embedding ")}


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_the_trigger_word_gets_the_files_embedding_as_with_lora(host_factory, tmp_path, family):
    vectors = _vectors(family, 5)
    host = host_factory(family, lora_dir=_loras(tmp_path / "Lora", family, vectors))
    ours = host.txt2img("photo of trig <ljl:J:1,1>", seed=4)
    found = _embedding_outputs(ours)
    assert found.keys() == {("cond", f"embedding trig {part}".rstrip()) for part in vectors}
    for part, vec in vectors.items():
        assert torch.equal(found["cond", f"embedding trig {part}".rstrip()], vec)
    builtin = host.txt2img("photo of trig <lora:J:1>", seed=4)
    assert_close(outputs(ours), outputs(builtin))  # embedding and weights alike


def test_taken_back_when_the_tag_is_gone(host_factory, tmp_path):
    host = host_factory("sd1", lora_dir=_loras(tmp_path / "Lora", "sd1", _vectors("sd1", 5)))
    assert _embedding_outputs(host.txt2img("trig <ljl:J:0,1>", seed=1))  # Σ leaves A out: trig still there
    from modules import sd_hijack
    assert "trig" in sd_hijack.model_hijack.embedding_db.word_embeddings
    assert not _embedding_outputs(host.txt2img("trig", seed=1))
    assert "trig" not in sd_hijack.model_hijack.embedding_db.word_embeddings
    again = host.txt2img("trig <ljl:J:1,0>", seed=1)  # a cached network registers again
    assert _embedding_outputs(again)


def test_an_embedding_of_the_embeddings_folder_keeps_its_name(host_factory, tmp_path):
    host = host_factory("sd1", lora_dir=_loras(tmp_path / "Lora", "sd1", _vectors("sd1", 5)))
    from modules import sd_hijack
    from modules.textual_inversion.textual_inversion import create_embedding_from_data
    folder_vec = torch.ones(1, 768)
    own = create_embedding_from_data({"string_to_param": {"*": folder_vec}}, "trig")
    sd_hijack.model_hijack.embedding_db.register_embedding(own, host.sd_model)
    res = host.txt2img("trig <ljl:J:1,1>", seed=1)
    assert torch.equal(_embedding_outputs(res)["cond", "embedding trig"], folder_vec)


def test_one_of_the_wrong_width_is_set_aside_and_the_weights_still_apply(host_factory, tmp_path):
    vectors = _vectors("sd1", 5, width_of={"": 1024})
    host = host_factory("sd1", lora_dir=_loras(tmp_path / "Lora", "sd1", vectors))
    res = host.txt2img("trig <ljl:J:1,1>", seed=1)
    from modules import sd_hijack
    assert not _embedding_outputs(res) and "J" in sd_hijack.model_hijack.embedding_db.skipped_embeddings
    assert_close(outputs(res), outputs(host.txt2img("trig <lora:J:1>", seed=1)))


def test_an_unreadable_one_is_reported_and_the_tag_still_applies(host_factory, tmp_path):
    root = _loras(tmp_path / "Lora", "sd1", _vectors("sd1", 5))
    two_terms = {"bundle_emb.odd.first": torch.ones(768), "bundle_emb.odd.second": torch.ones(768)}
    _add_to_file(root / "J.safetensors", two_terms)
    host = host_factory("sd1", lora_dir=root)
    res = host.txt2img("trig odd <ljl:J:1,1>", seed=1)
    assert "bundled embedding 'odd' not usable" in res.comments
    assert set(_embedding_outputs(res)) == {("cond", "embedding trig")}
    plain = host.txt2img("trig odd", seed=1)
    assert max(float((outputs(res)[k] - outputs(plain)[k]).abs().max()) for k in outputs(plain)) > 1e-3


@pytest.mark.parametrize("prompt", ["trig <ljl:J:1,0> <ljl:J:0,1>", "trig <lora:J:1> <ljl:J:0,1>"])
def test_one_file_under_two_tags_registers_its_embedding_without_a_word(host_factory, tmp_path, caplog, prompt):
    vectors = _vectors("sd1", 5)
    host = host_factory("sd1", lora_dir=_loras(tmp_path / "Lora", "sd1", vectors))
    with caplog.at_level("WARNING"):
        res = host.txt2img(prompt, seed=1)
    assert torch.equal(_embedding_outputs(res)["cond", "embedding trig"], vectors[""])
    assert "left out" not in caplog.text


def test_another_file_bundling_the_same_name_is_told_apart_from_the_folder(host_factory, tmp_path, caplog):
    root = _loras(tmp_path / "Lora", "sd1", _vectors("sd1", 5))
    other = write_lora(root, "C", "sd1", rank=2, seed=3)
    _add_to_file(other, _keys("trig", _vectors("sd1", 6)))
    host = host_factory("sd1", lora_dir=root)
    with caplog.at_level("WARNING"):
        host.txt2img("trig <ljl:J:1,1> <ljl:C:1>", seed=1)
    assert "trig of C left out: another LoRA of the prompt bundles a different one" in caplog.text
    assert "embeddings folder" not in caplog.text
