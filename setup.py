"""The package list (the rest of the metadata lives in pyproject.toml).

configs/ stays at the repository root (scripts, docs and device scripts say `configs/x.py`) and ships
inside the package as tokax.configs, in the wheel and in editable installs alike, so pip installs and
notebooks find it: `--config tokax:<name>.py[:arg]`, tokax.train.config_utils.config_path("<name>.py").
pyproject.toml's find directive cannot add a package from outside tokax/, hence this file.
"""
import setuptools

setuptools.setup(
    packages=setuptools.find_packages(include=["tokax", "tokax.*"]) + ["tokax.configs"],
    package_dir={"tokax.configs": "configs"},
)
