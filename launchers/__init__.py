"""The `megagpt` command line and the ways it starts processes (local, torchrun, srun)."""
