"""Build hook (the rest of the configuration is in pyproject.toml): a wheel carries copies of the files
kept at the project root in lora_merge_ext/shipped/, where lora_merge_ext.shipped_files finds them."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("preset.txt", "style.css", "examples/*.safetensors")  # MANIFEST.in lists them for the sdist


class BuildPyWithShippedFiles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads the files where they are
        target = Path(self.build_lib) / "lora_merge_ext" / "shipped"
        for pattern in SHIPPED:
            for source in sorted(ROOT.glob(pattern)):
                destination = target / source.relative_to(ROOT)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
