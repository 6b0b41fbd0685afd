"""tokax's experiment configs (ml_collections files with get_config(arg)), shipped inside the package.

The files live in the repository's configs/ folder; pyproject.toml maps that folder into the package as
tokax.configs, so a pip install carries them. Name one on the command line as `tokax:<name>.py[:arg]`
(`python -m tokax.train --config tokax:digits_vit.py:runlocal --workdir DIR`) and from Python with
tokax.train.config_utils.config_path("<name>.py") or load_config_file("tokax:<name>.py[:arg]").
"""
