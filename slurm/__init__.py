"""The sbatch templates ship inside megagpt as `megagpt.slurm_templates` (pyproject.toml maps this folder there),
read by megagpt/slurm.py; this file makes the folder a regular package, which an editable install needs to map it."""
