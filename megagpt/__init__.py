"""megagpt: CommonCrawl to a pretrained, instruction-aligned GPT."""

__version__ = "0.1.0"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a Slurm allocation's, a container's cpuset), not the machine's
    count, which oversubscribed a 4-core allocation on a 64-core node 16 times."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity
        return os.cpu_count() or 1
