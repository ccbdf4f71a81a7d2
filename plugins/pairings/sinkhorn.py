"""Entropic optimal transport (Sinkhorn) as a pairing: the worked example of a pairing plugin with an option.

Where AOT solves the exact assignment of a pool's noise to its images, this solves the entropy-regularised
transport between the two (POT's ``ot.sinkhorn``, uniform marginals, Euclidean cost scaled to [0, 1] by its
largest entry so that ``reg`` means the same at every image size) and draws each image's noise from its row of
the plan, with the pool's own generator (as torchcfm's OTPlanSampler draws pairs from a plan). ``reg`` -> 0
approaches the exact assignment; a large ``reg`` approaches independent noise (EDM). With class labels each class
is solved on its own, so noise never crosses classes. Unlike the assignment, a noise may serve two images.

Use it (conf/config.yaml, a profile, or from the command line):
    plugins: {pairings: [sinkhorn]}
    pool_study: {variants: {sinkhorn05: {pairing: sinkhorn, pool_size: 512, pairing_options: {reg: 0.05}}}}
"""

import numpy as np
import torch

from aot_diffusion.aot import pairwise_cost, register_pairing
from aot_diffusion.schema import Num


def sinkhorn_plan(cost: np.ndarray, reg: float) -> np.ndarray:
    """The entropic transport plan between uniform marginals for ``cost`` (scaled by its largest entry)."""
    import ot

    n, m = cost.shape
    scaled = cost / max(float(cost.max()), 1e-12)
    return ot.sinkhorn(np.full(n, 1.0 / n), np.full(m, 1.0 / m), scaled, reg, numItermax=10_000, stopThr=1e-9)


@register_pairing("sinkhorn", options={"reg": Num(1e-4, 10)})
def sinkhorn_pairing(images, noise, class_ids, *, generator=None, solver="auto", knn_k=4, reg=0.05):
    """Each image's noise drawn from its row of the Sinkhorn plan (per class when labelled)."""
    groups = [torch.arange(images.shape[0])] if class_ids is None else \
        [torch.nonzero(class_ids.cpu() == c).flatten() for c in torch.unique(class_ids.cpu())]
    out = torch.empty_like(noise)
    for index in groups:
        index = index.to(images.device)
        plan = sinkhorn_plan(pairwise_cost(images[index], noise[index]).double().cpu().numpy(), reg)
        rows = torch.as_tensor(plan / plan.sum(axis=1, keepdims=True))
        draw_device = generator.device if generator is not None else torch.device("cpu")
        chosen = torch.multinomial(rows.float().to(draw_device), 1, generator=generator).flatten().to(images.device)
        out[index] = noise[index][chosen]
    return out
