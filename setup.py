"""Everything is declared in pyproject.toml; this only copies the shipped data into the wheel.

The repository keeps the organism model, its dictionaries and the task files in top-level folders
(``models/organism``, ``dictionaries/organism``, ``tasks``) and the docs (``docs``); a built package carries them under
``featurecircuits/_data/`` with the same layout, where ``featurecircuits.models.REPO_ROOT`` finds them.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA = ("models/organism", "dictionaries/organism", "tasks", "docs")  # relative to the repository root


class build_py_with_data(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # an editable install reads the repository's folders
            return
        root = Path(__file__).resolve().parent
        target = Path(self.build_lib) / "featurecircuits" / "_data"
        for rel in DATA:
            src = root / rel
            if not src.is_dir():
                raise FileNotFoundError(f"{src} is missing; the package ships it (run `featurecircuits organism "
                                        "train` to rebuild the organism)")
            shutil.copytree(src, target / rel, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", ".*", "*.pyc"))


setup(cmdclass={"build_py": build_py_with_data})
