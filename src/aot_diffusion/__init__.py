"""aot_diffusion: EDM networks, samplers and training with approximated-optimal-transport noise pairing
(Kim et al., IJCAI 2024), Discriminator Guidance, and the metrics of the replication pipeline."""

__version__ = "0.1.0"
__all__ = ["load_edm_pickle"]


def load_edm_pickle(path, key: str = "ema", device="cpu"):
    """A released NVlabs/edm or EDM-AOT network pickle as our EDMPrecond, without running code from it
    (see :func:`aot_diffusion.edm_pickle.load_edm_pickle`; imported lazily to keep ``import`` light)."""
    from .edm_pickle import load_edm_pickle as load

    return load(path, key=key, device=device)
