"""A wheel built from the project (`pip install .`, `pip install git+…`) works outside a checkout: it
carries preset.txt, style.css and the example LoRAs, and the package finds them there."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["preset.txt", "style.css", *(f"examples/{p.name}" for p in sorted((ROOT / "examples").glob("*.safetensors")))]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built (offline, with this environment's setuptools) from a copy of the project."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", *SHIPPED):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, source / name)
    shutil.copytree(ROOT / "lora_merge_ext", source / "lora_merge_ext", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True, text=True)
    [built] = (tmp / "dist").glob("*.whl")
    return built


def test_the_wheel_carries_the_shipped_files(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name in SHIPPED:
            assert f"lora_merge_ext/shipped/{name}" in names, name
            assert _sha(z.read(f"lora_merge_ext/shipped/{name}")) == _sha((ROOT / name).read_bytes()), name
        assert not any(n.startswith(("tests/", "scripts/", "bench/")) for n in names)


def test_an_installed_wheel_finds_presets_css_and_examples(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True)
    # -S: no site hooks, so this checkout's editable install is out of sight; torch comes from PYTHONPATH
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]])}
    check = ("import lora_merge_ext, lora_merge_ext.shipped_files as s, lora_merge_ext.presets as p; "
             f"assert lora_merge_ext.__file__.startswith({str(site)!r}), lora_merge_ext.__file__; "
             "assert not s.in_checkout(); assert 'MIDD' in p.load_presets(); "
             "assert s.shipped_path('style.css').read_text().strip(); "
             "print(sorted(x.name for x in s.shipped_path('examples').glob('*.safetensors')))")
    done = subprocess.run([sys.executable, "-S", "-c", check], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(sorted(Path(n).name for n in SHIPPED if n.startswith("examples/")))
    examples = site / "lora_merge_ext" / "shipped" / "examples"
    out = tmp_path / "mid.safetensors"
    merged = subprocess.run([sys.executable, "-S", "-m", "lora_merge_ext", "merge", str(examples / "example_ink.safetensors"),
                             str(examples / "example_pastel.safetensors"), "-o", str(out), "--lbw", "MIDD"],
                            env=env, capture_output=True, text=True, cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert out.is_file()


def test_the_ui_extra_installs_the_gradio_4_set_the_tests_run_on():
    """`pip install '.[ui]'` must resolve to versions that work together: every package the extra
    names is allowed at the version dev/requirements-gradio4.txt pins (the set the UI tests run on)."""
    import tomllib
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    root = Path(__file__).resolve().parents[1]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["ui"]
    pins = {}
    for line in (root / "dev" / "requirements-gradio4.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.strip()
    for spec in map(Requirement, extra):
        assert canonicalize_name(spec.name) in pins, spec.name
        pinned = pins[canonicalize_name(spec.name)]
        assert spec.specifier.contains(pinned), (str(spec), pinned)
    named = {canonicalize_name(Requirement(s).name) for s in extra}
    assert {"gradio", "fastapi", "starlette", "huggingface-hub"} <= named  # the ones newer releases broke
