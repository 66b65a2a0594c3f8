"""These configs ship inside megagpt as `megagpt.configs` (pyproject.toml maps this folder there), read with
importlib.resources; this file makes the folder a regular package, which an editable install needs to map it."""
