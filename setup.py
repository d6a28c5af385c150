"""Build hook only (metadata lives in pyproject.toml): ship the top-level configs/ inside the package.

The configs stay where users and docs expect them (configs/ in the checkout); wheels carry a copy as
mmrep/configs/, which `mmrep configs list` and relative config paths fall back to (mmrep/config_files.py).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        src = Path(__file__).resolve().parent / "configs"
        if src.is_dir():
            shutil.copytree(src, Path(self.build_lib) / "mmrep" / "configs", dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithConfigs})
