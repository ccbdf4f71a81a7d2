"""aot_diffusion: EDM networks, samplers and training with approximated-optimal-transport noise pairing
(Kim et al., IJCAI 2024), Discriminator Guidance, and the metrics of the replication pipeline."""

__version__ = "0.1.0"
