"""Latent-diffusion super-resolution (issue 3).

Modules, each named for what it holds:

* :mod:`.spec` — ``ModelSpec`` (architecture + numerics, saved as ``config.json`` beside the weights)
* :mod:`.model` — ``LatentSR``: diffusers ``AutoencoderTiny``/``AutoencoderKL`` + conditional ``UNet2DModel``
* :mod:`.noise` — position-keyed Gaussian noise (seamless, reproducible)
* :mod:`.samplers` — DDIM and DPM-Solver++ as pure functions ``sampler(model, x, *, schedule, steps, noise, eta)``
* :mod:`.consistency` — sensor operators and the LR-consistency projection
* :mod:`.pipeline` — ``super_resolve`` (tiles in, tiles out) and ``SamplingOptions``
* :mod:`.upsampler` — the registry's ``ldm`` upsampler (``build``), with ``sample_with_std``
* :mod:`.weights_io` — safetensors + JSON checkpoints; the bundled model
* :mod:`.data`, :mod:`.train` — LR/HR pairs from GeoTIFFs; two-stage training with EMA, resumable
* :mod:`.evaluate` — PSNR/SSIM/consistency/seam evaluation behind ``geosr eval``
* :mod:`.ldsr` — LDSR-S2 (CompVis LDM) checkpoint conversion behind ``geosr import-weights``

Importing this package does not import torch; the submodules do.
"""
