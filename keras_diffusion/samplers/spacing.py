"""Time grids for samplers: where the model is evaluated."""

import numpy as np
from keras import ops

SPACINGS = ("uniform", "leading", "trailing", "linspace", "log_snr", "karras")
DISCRETE_SPACINGS = ("leading", "trailing", "linspace")


def _is_python_int(n):
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool)


def make_timesteps(schedule, num_steps, spacing="uniform", rho=7.0):
    """The decreasing times at which a sampler evaluates the model.

    After the last of them the sampler steps to t = 0. All grids start at
    (or, for "leading"/"linspace", near) t = 1.

    Args:
        schedule: a `keras_diffusion.schedules.Schedule`.
        num_steps: number of model evaluations N (a Python int or, for export,
            a scalar int tensor).
        spacing: "uniform": t_i = 1 - i/N. "leading", "trailing", "linspace":
            diffusers' spacings of the integer steps k of a discrete schedule,
            mapped to t = (k + 1) / T ("trailing" equals "uniform" when N
            divides T). "log_snr": uniform in log-SNR from t = 1 to
            `schedule.t_min`. "karras": Karras et al. (2022) eq. 5 with `rho`
            on sigma/alpha, from t = 1 to `schedule.t_min`.
        rho: the Karras exponent.

    Returns:
        float32 tensor of shape [N].
    """
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown `spacing`: {spacing!r}. Valid names: {list(SPACINGS)}")
    if _is_python_int(num_steps) and num_steps < 1:
        raise ValueError(f"`num_steps` must be at least 1, received num_steps={num_steps}")
    if spacing in DISCRETE_SPACINGS and schedule.num_train_timesteps is None:
        raise ValueError(
            f"`spacing`={spacing!r} needs a discrete schedule (with "
            f"num_train_timesteps), received {type(schedule).__name__}. Use one "
            "of 'uniform', 'log_snr', 'karras'."
        )
    n = ops.cast(num_steps, "float32")
    i = ops.cast(ops.arange(num_steps), "float32")
    if spacing == "uniform":
        return 1.0 - i / n
    if spacing in DISCRETE_SPACINGS:
        total = float(schedule.num_train_timesteps)
        if spacing == "linspace":
            k = ops.round((total - 1.0) * (n - 1.0 - i) / ops.maximum(n - 1.0, 1.0))
        elif spacing == "leading":
            k = (n - 1.0 - i) * ops.floor(total / n)
        else:  # trailing
            k = ops.round(total - i * (total / n)) - 1.0
        return (k + 1.0) / total
    # log_snr and karras: between t = 1 and t_min, in log-SNR.
    hi = schedule.log_snr(ops.convert_to_tensor(schedule.t_min, "float32"))
    lo = schedule.log_snr(ops.convert_to_tensor(1.0, "float32"))
    # Rectified flow has log_snr(1) = -inf: start one t_min below.
    lo = ops.where(
        ops.isfinite(lo),
        lo,
        schedule.log_snr(ops.convert_to_tensor(1.0 - schedule.t_min, "float32")),
    )
    frac = i / ops.maximum(n - 1.0, 1.0)
    if spacing == "log_snr":
        log_snr = lo + frac * (hi - lo)
    else:
        s_max = ops.exp(-0.5 * lo) ** (1.0 / rho)
        s_min = ops.exp(-0.5 * hi) ** (1.0 / rho)
        log_snr = -2.0 * rho * ops.log(s_max + frac * (s_min - s_max))
    t = schedule.t_from_log_snr(log_snr)
    # The first point is t = 1 exactly.
    return ops.where(i == 0.0, ops.ones_like(t), t)


def validate_timesteps(timesteps):
    """Checks explicit timesteps: 1-D, in (0, 1], strictly decreasing.

    Concrete values are checked here; symbolic ones are returned as they are.
    """
    try:
        values = np.asarray(ops.convert_to_numpy(timesteps), dtype=np.float64)
    except Exception:  # A symbolic tensor inside a traced function.
        return ops.cast(timesteps, "float32")
    if values.ndim != 1 or values.size < 1:
        raise ValueError(
            "`timesteps` must be a non-empty 1-D sequence, received shape "
            f"{values.shape}"
        )
    if np.any(~np.isfinite(values)) or np.any(values <= 0) or np.any(values > 1):
        raise ValueError(f"`timesteps` must lie in (0, 1], received timesteps={values}")
    if np.any(np.diff(values) >= 0):
        raise ValueError(
            f"`timesteps` must be strictly decreasing, received timesteps={values}"
        )
    return ops.convert_to_tensor(values.astype("float32"))
