"""Discriminator Guidance (DG, Kim et al. ICML 2023) and its AOT variant (AOT-DG).

A discriminator d(x_sigma, sigma[, label]) = sigmoid(logit) is trained with binary cross-entropy to
tell real training images (target 1) from samples of the trained diffusion model (target 0), both
perturbed as x + sigma * n. Guided sampling corrects the denoiser at the Euler evaluation of each
Heun step, inside a sigma window: D'(x; sigma) = D(x; sigma) + w * sigma^2 * grad_x log(d / (1 - d)).

As DG builds it, d is a frozen noise-aware ADM classifier used as a feature extractor plus a
trainable ADM encoder head. Modules, one concern each:

* :mod:`.vp`: sigma <-> VP time, the VP input of ADM models, DG's and ADM's noise-level draws.
* :mod:`.adm`: ADM's encoder UNet by DG's parameter names, the strict loader, :class:`ADMDiscriminator`.
* :mod:`.discriminators`: building DG's discriminator, the small CNN baseline, configs, save / load.
* :mod:`.training`: the noise-aware classifier, real/fake batches (AOT-paired or not), train / evaluate.
* :mod:`.guide`: :func:`log_ratio_grad` and :class:`GuidedDenoiser` (DG's boosting sampler: sampling.py).
"""

from .adm import (ADM_CLASSIFIER_32, DG_HEAD_CONFIG, DG_HEAD_NUM_CLASSES, ADMDiscriminator, ADMEncoderUNet,
                  adm_config_from_dg_args, adm_config_summary, load_adm_classifier, load_adm_state_dict, load_dg_classifier,
                  dg_classifier_config)
from .discriminators import (DIGITS_CLASSIFIER_CONFIG, DIGITS_HEAD_CONFIG, NoiseConditionedDiscriminator,
                             build_discriminator, load_discriminator, save_discriminator)
from .guide import DG_PROB_CLIP, GuidedDenoiser, log_ratio_grad
from .training import (discriminator_batches, evaluate_classifier, evaluate_discriminator, fit_discriminator,
                       optimise_discriminator, train_noise_aware_classifier)
from .vp import (DG_SIGMA_WINDOW, SIGMA_BANDS, SIGMA_DISTRIBUTIONS, draw_sigma, sigma_to_vp_time, vp_input,
                 vp_time_to_sigma, window_from_validation)

__all__ = [
    "ADM_CLASSIFIER_32", "DG_HEAD_CONFIG", "DG_HEAD_NUM_CLASSES", "ADMDiscriminator", "ADMEncoderUNet",
    "adm_config_from_dg_args", "adm_config_summary", "load_adm_classifier", "load_adm_state_dict", "load_dg_classifier", "dg_classifier_config",
    "DIGITS_CLASSIFIER_CONFIG", "DIGITS_HEAD_CONFIG", "NoiseConditionedDiscriminator", "build_discriminator",
    "load_discriminator", "save_discriminator", "DG_PROB_CLIP", "GuidedDenoiser", "log_ratio_grad",
    "discriminator_batches", "evaluate_classifier", "evaluate_discriminator", "fit_discriminator",
    "optimise_discriminator", "train_noise_aware_classifier", "DG_SIGMA_WINDOW", "SIGMA_BANDS",
    "SIGMA_DISTRIBUTIONS", "draw_sigma", "sigma_to_vp_time", "vp_input", "vp_time_to_sigma", "window_from_validation",
]
