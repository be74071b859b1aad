"""Samplers: stateless objects with `sample(model_fn, noise, *, schedule, prediction, ...)`."""

from keras_diffusion.samplers.consistency_sampler import ConsistencySampler
from keras_diffusion.samplers.ddim_sampler import DDIMSampler
from keras_diffusion.samplers.ddpm_sampler import DDPMSampler
from keras_diffusion.samplers.deis_sampler import DEISSampler
from keras_diffusion.samplers.dpm_solver_sampler import DPMSolverSampler
from keras_diffusion.samplers.dpm_solver_sde_sampler import DPMSolverSDESampler
from keras_diffusion.samplers.dpm_solver_singlestep_sampler import DPMSolverSinglestepSampler
from keras_diffusion.samplers.edm_sampler import EDMSampler
from keras_diffusion.samplers.euler_ancestral_sampler import EulerAncestralSampler
from keras_diffusion.samplers.euler_sampler import EulerSampler
from keras_diffusion.samplers.heun_sampler import HeunSampler
from keras_diffusion.samplers.masked_diffusion_sampler import MaskedDiffusionSampler
from keras_diffusion.samplers.ipndm_sampler import IPNDMSampler
from keras_diffusion.samplers.ode_sampler import ODESampler
from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.spacing import SPACINGS
from keras_diffusion.samplers.spacing import START_LOG_SNR
from keras_diffusion.samplers.spacing import make_timesteps
from keras_diffusion.samplers.spacing import start_time
from keras_diffusion.samplers.uniform_diffusion_sampler import UniformDiffusionSampler
from keras_diffusion.samplers.unipc_sampler import UniPCSampler

_NAMES = {
    "ddpm": DDPMSampler,
    "ddim": DDIMSampler,
    "dpm_solver": DPMSolverSampler,
    "euler": EulerSampler,
    "heun": HeunSampler,
    "ode": ODESampler,
    "unipc": UniPCSampler,
    "deis": DEISSampler,
    "ipndm": IPNDMSampler,
    "dpm_solver_singlestep": DPMSolverSinglestepSampler,
    "dpm_solver_sde": DPMSolverSDESampler,
    "euler_ancestral": EulerAncestralSampler,
    "edm": EDMSampler,
    "consistency": ConsistencySampler,
}


def get(identifier, **kwargs):
    """Returns a sampler from a name, a config dict or a sampler instance.

    Args:
        identifier: a snake_case name (see `keras_diffusion.samplers._NAMES`),
            a dict from `keras.saving.serialize_keras_object`, or a `Sampler`.
        **kwargs: constructor options when `identifier` is a name.

    Example:
    >>> keras_diffusion.samplers.get("ddim", eta=0.0)
    """
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, dict):
        import keras

        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str) and identifier in _NAMES:
        return _NAMES[identifier](**kwargs)
    raise ValueError(f"Unknown sampler: {identifier!r}. Valid names: {sorted(_NAMES)}")
