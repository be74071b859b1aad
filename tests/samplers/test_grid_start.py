"""Where the default grids start (and why: an imperfect model from t = 1).

A network's prediction is never exact. With "epsilon" prediction x0 =
(x_t - sigma eps) / alpha, so an eps error e becomes an x0 error e sigma /
alpha, and near alpha = 0 (cosine: alpha(1) = 4.9e-5, rectified flow:
alpha(1) = 0) the first step of a grid starting at t = 1 blows it up. These
tests emulate a trained network by the exact Gaussian-mixture denoiser plus
a small smooth error in the prediction's own units, and check that every
sampler on the default grid stays near the data for every schedule x
prediction pair.
"""

import numpy as np
import pytest
from keras import ops

from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.samplers import spacing
from keras_diffusion.testing import GaussianMixture
from keras_diffusion.testing import TestCase

RADIUS = 2.0
GMM = GaussianMixture.ring(num_modes=8, radius=RADIUS, std=0.1)
SCHEDULES = ("linear", "scaled_linear", "cosine", "ve", "rectified_flow")
PREDICTIONS = ("epsilon", "x0", "v", "flow")
ERROR = 0.1  # About the eps error of an MLPDenoiser after 1,500 steps.


def _imperfect(schedule, prediction, size=ERROR):
    """The exact denoiser plus a smooth error, in the prediction's own units.

    The error is `size` times a bounded function of x_t, scaled by the noise
    fraction sigma / sqrt(alpha^2 + sigma^2): like a trained network's, it
    is largest at high noise and vanishes where x_t is nearly data.
    """
    exact = GMM.denoiser(schedule, prediction)

    def model_fn(x_t, t):
        x_t = ops.cast(x_t, "float32")
        alpha, sigma = schedule.alpha_sigma(ops.cast(t, "float32"))
        noise_fraction = sigma / ops.sqrt(ops.square(alpha) + ops.square(sigma))
        error = ops.tanh(ops.flip(x_t, axis=1) + 0.5) * noise_fraction[:, None]
        return exact(x_t, t) + size * error

    return model_fn


def _noise(batch=64):
    return np.random.default_rng(0).normal(size=(batch, 2)).astype("float32")


def _near(x):
    """Fraction of samples within 0.3 (3 mode stds) of the ring, and max |x|."""
    x = np.asarray(ops.convert_to_numpy(x), np.float64)
    radius = np.linalg.norm(x, axis=1)
    return float(np.mean(np.abs(radius - RADIUS) < 0.3)), float(np.abs(x).max())


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


@pytest.mark.jax
class StartTimeTest(TestCase):
    def test_start_time(self):
        # Schedules whose log-SNR(1) is above START_LOG_SNR start at t = 1.
        for name in ("linear", "scaled_linear", "ve"):
            self.assertEqual(float(spacing.start_time(schedules.get(name))), 1.0, msg=name)
        # Variance exploding far below START_LOG_SNR (x0 = x_t - sigma eps
        # multiplies an eps error by sigma up to 1000): it starts there too,
        # from N(0, sigma(t_start)^2) rather than N(0, sigma_max^2).
        big_ve = schedules.VESchedule(sigma_max=1000.0)
        self.assertLess(float(big_ve.log_snr(1.0)), spacing.START_LOG_SNR)
        t0 = spacing.start_time(big_ve)
        self.assertAllClose(big_ve.log_snr(t0), spacing.START_LOG_SNR, atol=1e-3)
        self.assertAllClose(spacing.start_std(big_ve, t0), big_ve.alpha_sigma(t0)[1])
        self.assertAllClose(spacing.start_std(big_ve, 1.0), 1000.0)
        for name, exploding in (("ve", True), ("edm", True), ("cosine", False),
                                ("rectified_flow", False), ("linear", False)):
            self.assertEqual(bool(_np(schedules.get(name).variance_exploding())), exploding)
        # VP schedules start from N(0, 1) wherever the grid starts.
        cosine = schedules.CosineSchedule()
        self.assertEqual(float(spacing.start_std(cosine, spacing.start_time(cosine))), 1.0)
        # Cosine (log-SNR(1) = -19.8) and rectified flow (-inf) start where
        # the log-SNR reaches START_LOG_SNR.
        for name in ("cosine", "rectified_flow"):
            schedule = schedules.get(name)
            t0 = spacing.start_time(schedule)
            self.assertLess(float(t0), 0.999, msg=name)
            self.assertAllClose(schedule.log_snr(t0), spacing.START_LOG_SNR, atol=1e-3)

    def test_grids_start_at_start_time(self):
        for name in SCHEDULES:
            schedule = schedules.get(name)
            t0 = float(spacing.start_time(schedule))
            for kind in ("uniform", "log_snr", "karras"):
                times = _np(samplers.make_timesteps(schedule, 10, kind))
                self.assertAllClose(times[0], t0, atol=1e-7, msg=f"{name} {kind}")
                self.assertTrue(np.all(np.diff(times) < 0), msg=f"{name} {kind}")
                self.assertTrue(np.all(np.isfinite(_np(schedule.log_snr(times)))))
            uniform = _np(samplers.make_timesteps(schedule, 10, "uniform"))
            self.assertAllClose(uniform, t0 * (1.0 - np.arange(10) / 10.0), atol=1e-7)
        # The default of every sampler's `timesteps` is that grid.
        cosine = schedules.CosineSchedule()
        self.assertAllClose(
            samplers.DDIMSampler().timesteps(cosine, 50),
            samplers.make_timesteps(cosine, 50, "uniform"),
        )

    def test_noise_predictions_start_at_log_snr_minus_5(self):
        for prediction in ("epsilon", "score"):
            self.assertEqual(spacing.start_log_snr_for(prediction), spacing.NOISE_START_LOG_SNR)
        for prediction in ("x0", "v", "flow", None):
            self.assertEqual(spacing.start_log_snr_for(prediction), spacing.START_LOG_SNR)
        # Every default schedule's log-SNR(1) is below -5 (scaled_linear:
        # -5.36), so every one starts there for noise predictions.
        for name in SCHEDULES:
            schedule = schedules.get(name)
            for kind in ("uniform", "log_snr", "karras"):
                times = _np(samplers.DDIMSampler().timesteps(schedule, 10, spacing=kind,
                                                             prediction="epsilon"))
                self.assertAllClose(schedule.log_snr(times[0]), spacing.NOISE_START_LOG_SNR,
                                    atol=1e-3, msg=f"{name} {kind}")
        # Other predictions keep their grid (linear: from t = 1).
        linear = schedules.LinearSchedule()
        self.assertEqual(float(samplers.DDIMSampler().timesteps(linear, 10, prediction="v")[0]),
                         1.0)
        self.assertAllClose(
            samplers.DDIMSampler().timesteps(linear, 10, prediction="epsilon"),
            samplers.make_timesteps(linear, 10, start_log_snr=spacing.NOISE_START_LOG_SNR),
        )

    def test_noise_prediction_start_keeps_every_mode(self):
        # The eps error amplified by sigma / alpha at low SNR becomes a drift
        # that a deterministic sampler integrates: from log-SNR -10.5 (t = 1
        # on linear and VE) a mode of the ring keeps under 1/16 of the
        # samples (1/8 is exact); from -5 every one keeps more.
        noise = np.random.default_rng(0).normal(size=(2000, 2)).astype("float32")
        sampler = samplers.DDIMSampler()
        for name in self.backend_cases(("linear", "cosine", "ve", "rectified_flow")):
            schedule = schedules.get(name)
            model_fn = _imperfect(schedule, "epsilon")
            low = samplers.make_timesteps(schedule, 50, start_log_snr=spacing.START_LOG_SNR)
            for times, default in ((None, True), (low, False)):
                x = _np(sampler.sample(model_fn, noise, schedule=schedule, prediction="epsilon",
                                       num_steps=50, timesteps=times))
                fractions = np.bincount(GMM.classify(x), minlength=8) / len(x)
                msg = f"{name} default={default}: {np.round(fractions, 3)}"
                if default:
                    self.assertGreater(fractions.min(), 1 / 16, msg=msg)
                else:
                    self.assertLess(fractions.min(), 1 / 16, msg=msg)

    def test_log_snr_grid_spends_no_step_at_pure_noise(self):
        # Before: the 10-point log_snr grid on cosine went -19.8, -16.6, ...,
        # three model evaluations at log-SNR < -10 where x_t is pure noise.
        cosine = schedules.CosineSchedule()
        for kind in ("log_snr", "karras"):
            log_snr = _np(cosine.log_snr(samplers.make_timesteps(cosine, 10, kind)))
            self.assertGreaterEqual(log_snr.min(), -100.0)
            self.assertEqual(int(np.sum(log_snr < spacing.START_LOG_SNR - 1e-3)), 0, msg=kind)

    def test_diffusers_grids_and_explicit_timesteps_unchanged(self):
        cosine = schedules.CosineSchedule()
        trailing = _np(samplers.make_timesteps(cosine, 10, "trailing"))
        self.assertAllClose(trailing, 1.0 - np.arange(10) / 10.0, atol=1e-7)
        linspace = _np(samplers.make_timesteps(cosine, 7, "linspace"))
        self.assertAllClose(linspace[0], 1.0)
        leading = _np(samplers.make_timesteps(cosine, 10, "leading"))
        self.assertAllClose(leading, (900.0 - 100.0 * np.arange(10) + 1.0) / 1000.0)
        given = np.array([1.0, 0.5, 0.1], "float32")
        self.assertAllClose(samplers.DDIMSampler().timesteps(cosine, timesteps=given), given)
        # Linear's uniform grid is still diffusers' trailing grid.
        linear = schedules.LinearSchedule()
        self.assertAllClose(
            samplers.make_timesteps(linear, 20, "uniform"),
            samplers.make_timesteps(linear, 20, "trailing"),
            atol=1e-7,
        )

    def test_from_t1_epsilon_cosine_explodes(self):
        # The failure the default grid avoids: on the grid from t = 1 the
        # 0.1 eps error is multiplied by alpha(0.98) / alpha(1) ~ 600 and no
        # sample lands on the ring (a network, unlike the exact denoiser,
        # then extrapolates: the MLP of benchmarks/toy2d.py reached |x| ~ 1e4).
        schedule = schedules.CosineSchedule()
        old_grid = (1.0 - np.arange(50) / 50.0).astype("float32")
        x = samplers.DDIMSampler().sample(
            _imperfect(schedule, "epsilon"), _noise(), schedule=schedule,
            prediction="epsilon", timesteps=old_grid,
        )
        near, max_abs = _near(x)
        self.assertLess(near, 0.1)
        self.assertGreater(max_abs, 5.0)


class ODESamplerStartTest(TestCase):
    def test_ode_default_span_and_imperfect_model(self):
        self.skip_unless_tensorflow()
        linear = schedules.LinearSchedule()
        self.assertAllClose(samplers.ODESampler().timesteps(linear), [1.0, 1e-3])
        cosine = schedules.CosineSchedule()
        self.assertAllClose(
            samplers.ODESampler().timesteps(cosine), [float(spacing.start_time(cosine)), 1e-3]
        )
        for name in ("cosine", "rectified_flow"):
            schedule = schedules.get(name)
            x = samplers.ODESampler(rtol=1e-4, atol=1e-4).sample(
                _imperfect(schedule, "epsilon"), _noise(), schedule=schedule,
                prediction="epsilon",
            )
            near, max_abs = _near(x)
            self.assertGreaterEqual(near, 0.9, msg=f"{name}: near={near}")
            self.assertLess(max_abs, 3.5, msg=f"{name}: max={max_abs}")
