"""Only what pyproject.toml cannot say: the top-level ``search_spaces/`` folder (the built-in
search spaces' home) ships inside the package as ``autosqueeze/search_spaces``. A find directive
in pyproject.toml cannot add a package mapped from another folder, so the list is made here."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["autosqueeze", "autosqueeze.*"]) + ["autosqueeze.search_spaces"],
    package_dir={"autosqueeze.search_spaces": "search_spaces"},
)
