"""Time grids for samplers: where the model is evaluated."""

import numpy as np
from keras import ops

from keras_diffusion.utils.asserts import runtime_check

SPACINGS = ("uniform", "leading", "trailing", "linspace", "log_snr", "karras")
DISCRETE_SPACINGS = ("leading", "trailing", "linspace")

# The grids "uniform", "log_snr" and "karras" start no lower in log-SNR than
# this: just below DDPM's linear schedule at t = 1 (-10.12), so that its
# grids (and those of scaled_linear, -5.36, and of the default VE schedule,
# -7.82) still start at t = 1. Below it the data is ~0 in x_t (alpha < 5.3e-3
# on a VP schedule): the cosine schedule's clipped last beta puts log-SNR(1)
# at -19.8 (alpha = 4.9e-5) and rectified flow's is -inf (alpha = 0).
START_LOG_SNR = -10.5
# Noise predictions ("epsilon", "score") start higher, at log-SNR -5 (alpha
# = 0.082 on a VP schedule): their x0 = (x_t - sigma eps) / alpha turns an
# eps error e into e sigma / alpha (12 here, 190 at -10.5), and a
# deterministic sampler integrates that into a drift. Measured on the 8-mode
# ring of benchmarks/toy2d.py (an MLP, 1,500 steps), deterministic samplers:
# from -10.5 one of the 8 modes keeps 0.1-6% of the samples on linear, cosine
# and rectified flow; from -5 every mode keeps >= 7.1% (1/8 is exact), with
# every sampler. scaled_linear (-5.36) moves to t = 0.97; the signal ignored
# by starting from N(0, 1) there is alpha x0 (alpha <= 0.082).
NOISE_START_LOG_SNR = -5.0
NOISE_PREDICTIONS = ("epsilon", "score")


def _is_python_int(n):
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool)


def start_log_snr_for(prediction=None):
    """The lowest log-SNR a default grid starts at for a `prediction` type:
    `NOISE_START_LOG_SNR` for "epsilon" and "score", else `START_LOG_SNR`."""
    return NOISE_START_LOG_SNR if prediction in NOISE_PREDICTIONS else START_LOG_SNR


def start_time(schedule, start_log_snr=START_LOG_SNR):
    """Where the "uniform", "log_snr" and "karras" grids start.

    t = 1 if log-SNR(1) >= `start_log_snr`, else the time at which the
    log-SNR equals `start_log_snr` (where the SNR stops being about 0).

    Why: from x_t a noise prediction gives x0 = (x_t - sigma eps) / alpha,
    so a model's eps error e becomes an x0 error e sigma / alpha, and a step
    from t to s puts alpha_s e sigma_t / alpha_t of it into x_s. On the cosine
    schedule alpha(1) = 4.9e-5: a 50-step uniform grid from t = 1 multiplies
    e by ~600 on its first step: an MLP with an eps error of 0.1 sampled the
    2-D ring of benchmarks/toy2d.py up to |x| = 7,600 (rectified flow,
    alpha(1) = 0, gives NaN). From log-SNR -10.5 (alpha = 5.2e-3) that factor
    is ~7. Starting from the prior there
    instead of at t = 1 ignores a signal alpha x0 of at most 0.5% of the data,
    and it also stops the "log_snr" and "karras" grids from spending their
    first steps at pure noise, which cost them most at 5-10 steps.
    The same holds on variance-exploding schedules (alpha = 1), where x0 =
    x_t - sigma eps: there the grid starts below t = 1 only where log-SNR(1)
    = -2 log sigma_max is below `start_log_snr` (the default VE, sigma_max =
    50, and EDM, 80, keep t = 1 at -10.5), and the samplers then start from
    N(0, sigma(t_start)^2), `start_std`.

    The diffusers grids ("leading", "trailing", "linspace") and explicit
    `timesteps` are not affected.

    Args:
        schedule: a `keras_diffusion.schedules.Schedule`.
        start_log_snr: the lowest log-SNR a grid starts at.

    Returns:
        A float32 scalar tensor in (0, 1].
    """
    one = ops.convert_to_tensor(1.0, "float32")
    floor = ops.convert_to_tensor(float(start_log_snr), "float32")
    low = schedule.log_snr(one) < floor
    t_floor = ops.clip(schedule.t_from_log_snr(floor), schedule.t_min, 1.0)
    return ops.where(low, t_floor, one)


def start_std(schedule, t_start):
    """The standard deviation of the noise a sampler starts from at `t_start`.

    `schedule.prior_std`, the marginal's at t = 1, except on variance-
    exploding schedules (alpha = 1) when `t_start` < 1: there x_t's marginal
    is about N(0, sigma(t_start)^2), far from N(0, prior_std^2). (On VP
    schedules prior_std = 1 is the marginal's std for unit-variance data at
    every t.)
    """
    t_start = ops.cast(t_start, "float32")
    prior = ops.convert_to_tensor(float(schedule.prior_std), "float32")
    below = ops.logical_and(schedule.variance_exploding(), t_start < 1.0)
    return ops.where(below, schedule.sigma(t_start), prior)


def make_timesteps(
    schedule, num_steps, spacing="uniform", rho=7.0, start_log_snr=START_LOG_SNR
):
    """The decreasing times at which a sampler evaluates the model.

    After the last of them the sampler steps to t = 0. "uniform", "log_snr"
    and "karras" start at t_start = `start_time(schedule, start_log_snr)`:
    t = 1, or where the log-SNR reaches `start_log_snr` on a schedule whose
    log-SNR(1) is lower (cosine, rectified flow). "leading", "trailing" and
    "linspace" are diffusers' grids exactly ("trailing" and "linspace" start
    at t = 1, also on cosine).

    Args:
        schedule: a `keras_diffusion.schedules.Schedule`.
        num_steps: number of model evaluations N (a Python int or, for export,
            a scalar int tensor).
        spacing: "uniform": t_i = t_start (1 - i/N). "leading", "trailing",
            "linspace": diffusers' spacings of the integer steps k of a
            discrete schedule, mapped to t = (k + 1) / T ("trailing" equals
            "uniform" when N divides T and t_start = 1). "log_snr": uniform
            in log-SNR from t_start to `schedule.t_min`. "karras": Karras et
            al. (2022) eq. 5 with `rho` on sigma/alpha, from t_start to
            `schedule.t_min`.
        rho: the Karras exponent.
        start_log_snr: see `start_time`.

    Returns:
        float32 tensor of shape [N].
    """
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown `spacing`: {spacing!r}. Valid names: {list(SPACINGS)}")
    if _is_python_int(num_steps) and num_steps < 1:
        raise ValueError(f"`num_steps` must be at least 1, received num_steps={num_steps}")
    if not _is_python_int(num_steps):
        # A tensor (e.g. a traced function's input): checked when the graph runs.
        num_steps = runtime_check(
            num_steps, ops.all(num_steps >= 1), "`num_steps` must be at least 1"
        )
    if spacing in DISCRETE_SPACINGS and schedule.num_train_timesteps is None:
        raise ValueError(
            f"`spacing`={spacing!r} needs a discrete schedule (with "
            f"num_train_timesteps), received {type(schedule).__name__}. Use one "
            "of 'uniform', 'log_snr', 'karras'."
        )
    n = ops.cast(num_steps, "float32")
    i = ops.cast(ops.arange(num_steps), "float32")
    if spacing == "uniform":
        return start_time(schedule, start_log_snr) * (1.0 - i / n)
    if spacing in DISCRETE_SPACINGS:
        total = float(schedule.num_train_timesteps)
        if spacing == "linspace":
            k = ops.round((total - 1.0) * (n - 1.0 - i) / ops.maximum(n - 1.0, 1.0))
        elif spacing == "leading":
            k = (n - 1.0 - i) * ops.floor(total / n)
        else:  # trailing
            k = ops.round(total - i * (total / n)) - 1.0
        return (k + 1.0) / total
    # log_snr and karras: between t_start and t_min, in log-SNR.
    t_start = start_time(schedule, start_log_snr)
    frac = i / ops.maximum(n - 1.0, 1.0)
    t = grid_time(schedule, frac, spacing, rho, start_log_snr)
    # The first point is t_start exactly.
    return ops.where(i == 0.0, t_start * ops.ones_like(t), t)


def grid_time(schedule, frac, spacing="karras", rho=7.0, start_log_snr=START_LOG_SNR):
    """The time at fraction `frac` in [0, 1] of a "log_snr" or "karras" grid.

    `frac = 0` is t_start (`start_time`), `frac = 1` is `schedule.t_min`;
    `make_timesteps` evaluates it at i / (N - 1). Any shape of `frac` (e.g.
    per-example grid positions of consistency training).
    """
    if spacing not in ("log_snr", "karras"):
        raise ValueError(
            f"`spacing` must be 'log_snr' or 'karras', received spacing={spacing!r}"
        )
    frac = ops.cast(frac, "float32")
    t_start = start_time(schedule, start_log_snr)
    hi = schedule.log_snr(ops.convert_to_tensor(schedule.t_min, "float32"))
    lo = schedule.log_snr(t_start)
    if spacing == "log_snr":
        log_snr = lo + frac * (hi - lo)
    else:
        s_max = ops.exp(-0.5 * lo) ** (1.0 / rho)
        s_min = ops.exp(-0.5 * hi) ** (1.0 / rho)
        log_snr = -2.0 * rho * ops.log(s_max + frac * (s_min - s_max))
    return schedule.t_from_log_snr(log_snr)


def validate_timesteps(timesteps):
    """Checks explicit timesteps: 1-D, in (0, 1], strictly decreasing.

    Concrete values are checked here; symbolic ones are returned as they are.
    """
    try:
        values = np.asarray(ops.convert_to_numpy(timesteps), dtype=np.float64)
    except Exception:  # A symbolic tensor inside a traced function.
        return _check_symbolic_timesteps(ops.cast(timesteps, "float32"))
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


def _check_symbolic_timesteps(t):
    """The checks of `validate_timesteps`, run when the traced graph runs."""
    if len(t.shape) != 1:
        raise ValueError(f"`timesteps` must be 1-D, received shape {tuple(t.shape)}")
    in_range = ops.all(ops.logical_and(t > 0.0, t <= 1.0))
    t = runtime_check(t, in_range, "`timesteps` must lie in (0, 1] (and not be NaN)")
    decreasing = ops.all(t[1:] < t[:-1])
    t = runtime_check(t, decreasing, "`timesteps` must be strictly decreasing")
    return runtime_check(t, ops.shape(t)[0] >= 1, "`timesteps` must not be empty")
