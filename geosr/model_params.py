"""The ``model.params`` of each built-in model, validated when the configuration is loaded (a typo fails there, not
on a GPU worker): :class:`ClassicParams` (none) and :class:`LdmParams` (``model.name: ldm``). The union keyed on
the model's name is :data:`geosr.config.ModelConfig`.

The fields mirror :class:`geosr.diffusion.pipeline.SamplingOptions` plus ``weights``, ``channels_last`` and
``compile`` (the keywords of :func:`geosr.diffusion.upsampler.build`); ``tests/test_config.py`` checks that
they stay in step. To add a sampling option: add it to ``SamplingOptions`` and here. Every field is optional:
unset, the model's own recommended sampling (its ``config.json``) applies, and an unset field is left out of
the configuration's dump (and so out of its hash). Ranges are checked by ``SamplingOptions`` when the model
is built; enumerations here, as ``Literal`` types. Importing this module does not import torch.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer


class ClassicParams(BaseModel):
    """The classic kernels take no parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class LdmParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: str | None = Field(default=None, description="checkpoint directory (config.json + safetensors); "
                                "default: the bundled model")
    steps: int | None = Field(default=None, ge=1, description="sampler steps")
    sampler: Literal["dpmpp", "ddim"] | None = Field(default=None, description="DPM-Solver++ or DDIM")
    eta: float | None = Field(default=None, ge=0.0, le=1.0, description="0 deterministic .. 1 stochastic")
    keyed_noise: bool | None = Field(default=None, description="noise keyed on the global pixel (seamless)")
    fuse: bool | None = Field(default=None, description="MultiDiffusion latent fusion within a batch")
    operator: Literal["average", "gaussian"] | None = Field(default=None, description="sensor operator")
    projection: bool | None = Field(default=None, description="enforce LR consistency")
    projection_iterations: int | None = Field(default=None, ge=0)
    diffusion: bool | None = Field(default=None, description="false: the mean predictor's estimate alone")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = None
    ensemble: Literal[1, 2, 4, 8] | None = Field(default=None, description="geometric self-ensemble of the mean")
    project_x0: bool | None = Field(default=None, description="keep the measurement inside sampling: project every "
                                    "step's predicted clean image")
    noise_sigma: float | Literal["auto"] | None = Field(
        default=None, description="the input's noise std (reflectance), told to band-shared models (0: clean; auto: "
        "estimated per tile and band)")
    channels_last: bool | None = Field(default=None, description="CUDA speed option")
    compile: bool | None = Field(default=None, description="CUDA speed option (torch.compile)")

    @model_serializer(mode="wrap")
    def _set_only(self, handler: Any) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}
