"""Output-name rules of the merge tab: plain names, one sub-folder at most, overwrite and input rules."""
import os
from pathlib import Path

import pytest

from lora_merge_ext.errors import LoraMergeError
from lora_merge_ext.ui.names import check_plain_name, output_path, output_stem


@pytest.mark.parametrize("bad, why", [
    ("", "empty"),
    ("   ", "empty"),
    ("a/b", "path separator"),
    ("a\\b", "path separator"),
    ("..", "'..'"),
    (".", "folder reference"),
    ("/etc/passwd", "absolute path"),
    ("\\\\server\\share", "absolute path"),
    ("C:evil", "cannot hold: .:."),  # drive-relative on Windows; the colon is the reason given
    ("C:\\Windows\\x", "absolute path"),
    ("ab:c", "characters"),
    ("a:b", "cannot hold: .:."),
    ("a<b>", "characters"),
    ("what?", "characters"),
    ("tab\there", "characters"),
    (".hidden", "start with '.'"),
    ("trailing.", "end with"),
    ("CON", "reserved"),
    ("nul.safetensors", "reserved"),
])
def test_bad_names_are_refused_with_the_reason(bad, why):
    with pytest.raises(LoraMergeError, match=why):
        check_plain_name(bad)


@pytest.mark.parametrize("good", ["my_merge", "style 2", "ünïcode-名前", "a.b", "v1.5_mix", "my..merge"])
def test_plain_names_pass(good):
    assert check_plain_name(good) == good


def test_extension_is_added_once_and_other_model_extensions_refused():
    assert output_stem("mix") == "mix"
    assert output_stem("mix.safetensors") == "mix"
    assert output_stem("mix.SAFETENSORS") == "mix"
    with pytest.raises(LoraMergeError, match=r"\.ckpt"):
        output_stem("mix.ckpt")
    with pytest.raises(LoraMergeError, match="start with '.'"):
        output_stem(".safetensors")


def test_output_goes_into_the_folder_or_one_subfolder(tmp_path):
    assert output_path(tmp_path, "mix") == tmp_path.resolve() / "mix.safetensors"
    assert output_path(tmp_path, "mix", "styles") == tmp_path.resolve() / "styles" / "mix.safetensors"
    for sub in ("a/b", "..", "/tmp", "a\\b"):
        with pytest.raises(LoraMergeError, match="sub-folder"):
            output_path(tmp_path, "mix", sub)


def test_subfolder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "notdir").write_text("x")
    with pytest.raises(LoraMergeError, match="not a folder"):
        output_path(tmp_path, "mix", "notdir")


def test_symlinked_subfolder_leading_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "Lora"
    root.mkdir()
    try:
        os.symlink(outside, root / "link", target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not available")
    with pytest.raises(LoraMergeError, match="not inside the Lora folder"):
        output_path(root, "mix", "link")


def test_existing_file_needs_overwrite(tmp_path):
    (tmp_path / "mix.safetensors").write_bytes(b"old")
    with pytest.raises(LoraMergeError, match="already exists.*overwrite"):
        output_path(tmp_path, "mix")
    assert output_path(tmp_path, "mix", overwrite=True).name == "mix.safetensors"


def test_an_input_is_never_the_output_even_with_overwrite(tmp_path):
    src = tmp_path / "a.safetensors"
    src.write_bytes(b"input")
    with pytest.raises(LoraMergeError, match="one of the inputs"):
        output_path(tmp_path, "a", overwrite=True, inputs=[src])
    link = tmp_path / "sub"
    link.mkdir()
    try:
        os.link(src, link / "b.safetensors")
    except OSError:
        pytest.skip("hard links not available")
    with pytest.raises(LoraMergeError, match="one of the inputs"):
        output_path(tmp_path, "b", "sub", overwrite=True, inputs=[Path(src)])


@pytest.mark.parametrize("subfolder_exists", [False, True])
def test_names_too_long_for_the_folder_are_refused_in_one_line(tmp_path, subfolder_exists):
    if subfolder_exists:
        (tmp_path / "sub").mkdir()
    with pytest.raises(LoraMergeError, match=r"file name is 312 bytes, longer than the \d+ this folder allows"):
        output_path(tmp_path, "n" * 300, "sub")
    with pytest.raises(LoraMergeError, match=r"file name is 300 bytes, longer than"):
        output_path(tmp_path, "x", "s" * 300)
    assert sorted(os.listdir(tmp_path)) == (["sub"] if subfolder_exists else [])
