"""Connecting to Ray, for every command with ``--ray ADDRESS`` (trace collection, forager episodes): "local"
starts a Ray instance on this machine with ``workers`` CPUs, anything else is a cluster address."""

from __future__ import annotations


def connect(address: str | None, workers: int):
    """The ``ray`` module, initialised (once per process)."""
    try:
        import ray
    except ImportError:
        raise RuntimeError("--ray needs Ray: pip install 'opencwm[ray]'") from None
    if not ray.is_initialized():
        if address in (None, "local"):
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return ray
