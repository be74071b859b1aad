"""Prediction conversions, targets, loss weightings and time distributions."""

import itertools

import numpy as np
import pytest
from keras import ops

from keras_diffusion import objectives
from keras_diffusion import schedules
from keras_diffusion.testing import TestCase

SCHEDULES = [
    schedules.CosineSchedule(),
    schedules.LinearSchedule(),
    schedules.VESchedule(sigma_min=0.01, sigma_max=20.0),
    schedules.RectifiedFlowSchedule(),
    schedules.RectifiedFlowSchedule(shift=3.0),
]


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


@pytest.mark.jax
class ObjectivesTest(TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.x0 = rng.uniform(-1, 1, size=(4, 3, 3, 2)).astype("float32")
        self.eps = rng.normal(size=self.x0.shape).astype("float32")
        self.t = np.array([0.05, 0.3, 0.6, 0.95], "float32")

    def test_every_conversion_round_trips(self):
        for schedule in SCHEDULES:
            x_t = schedule.add_noise(self.x0, self.eps, self.t)
            targets = {
                p: objectives.from_x0_epsilon(p, self.x0, self.eps, self.t, schedule)
                for p in objectives.PREDICTIONS
            }
            for source, target in itertools.product(objectives.PREDICTIONS, repeat=2):
                converted = objectives.convert(
                    targets[source], x_t, self.t, schedule, source, target
                )
                scale = np.abs(_np(targets[target])).max()
                atol = 2e-5
                if source == "score" and target != "score":
                    # eps is recovered as -sigma * s: one more float32 rounding
                    # of eps than from "epsilon", which x0 = (x_t - sigma eps) / alpha
                    # amplifies by sigma / alpha (about 80 on linear at t = 0.95).
                    alpha, sigma = (_np(v) for v in schedule.alpha_sigma(self.t))
                    amplification = max(1.0, float(np.max(sigma / alpha)))
                    atol += 2 * 2.0**-24 * np.abs(self.eps).max() * amplification / scale
                self.assertAllClose(
                    _np(converted) / scale,
                    _np(targets[target]) / scale,
                    atol=atol,
                    msg=f"{type(schedule).__name__} {source}->{target}",
                )
            x0, eps = objectives.to_x0_epsilon("v", targets["v"], x_t, self.t, schedule)
            self.assertAllClose(x0, self.x0, atol=1e-4)
            self.assertAllClose(eps, self.eps, atol=1e-4)

    def test_flow_is_the_time_derivative_of_x_t(self):
        # Midpoints of the discrete schedules' grid cells (no kink inside).
        t = self.t + np.float32(5e-4)
        h = 2e-4
        for schedule in SCHEDULES:
            flow = objectives.from_x0_epsilon("flow", self.x0, self.eps, t, schedule)
            hi = schedule.add_noise(self.x0, self.eps, t + h)
            lo = schedule.add_noise(self.x0, self.eps, t - h)
            fd = (_np(hi) - _np(lo)) / (2 * h)
            scale = np.abs(fd).max()
            self.assertAllClose(_np(flow) / scale, fd / scale, atol=3e-3)

    def test_rectified_flow_velocity_is_eps_minus_x0(self):
        schedule = schedules.RectifiedFlowSchedule()
        flow = objectives.from_x0_epsilon("flow", self.x0, self.eps, self.t, schedule)
        self.assertAllClose(flow, self.eps - self.x0, atol=1e-6)

    def test_v_matches_salimans_and_ho(self):
        schedule = schedules.CosineSchedule()
        alpha, sigma = map(_np, schedule.alpha_sigma(self.t))
        v = objectives.from_x0_epsilon("v", self.x0, self.eps, self.t, schedule)
        expected = alpha[:, None, None, None] * self.eps - sigma[:, None, None, None] * self.x0
        self.assertAllClose(v, expected, atol=1e-6)

    def test_error_scale_relates_prediction_spaces(self):
        # The same x0 error, seen in each prediction space.
        rng = np.random.default_rng(1)
        delta = rng.normal(size=self.x0.shape).astype("float32") * 0.1
        for schedule in SCHEDULES:
            x_t = schedule.add_noise(self.x0, self.eps, self.t)
            x0_err = np.sum(_np(delta) ** 2, axis=(1, 2, 3))
            for p in objectives.PREDICTIONS:
                good = objectives.from_x0_epsilon(p, self.x0, self.eps, self.t, schedule)
                alpha, sigma = schedule.alpha_sigma(self.t)
                bad_x0 = self.x0 + delta
                bad_eps = (x_t - alpha[:, None, None, None] * bad_x0) / sigma[:, None, None, None]
                bad = objectives.from_x0_epsilon(p, bad_x0, bad_eps, self.t, schedule)
                err = np.sum((_np(bad) - _np(good)) ** 2, axis=(1, 2, 3))
                scale = _np(objectives.x0_error_scale(p, self.t, schedule))
                self.assertAllClose(err, scale * x0_err, rtol=2e-3, msg=p)

    def test_min_snr_weights_match_hang_et_al(self):
        schedule = schedules.CosineSchedule()
        snr = np.exp(_np(schedule.log_snr(self.t)))
        gamma = 5.0
        for p, expected in {
            "epsilon": np.minimum(snr, gamma) / snr,
            "x0": np.minimum(snr, gamma),
            "v": np.minimum(snr, gamma) / (snr + 1),
        }.items():
            w = objectives.loss_weight("min_snr", p, self.t, schedule, gamma=gamma)
            self.assertAllClose(w, expected, rtol=1e-4, msg=p)
        self.assertAllClose(
            objectives.loss_weight("none", "v", self.t, schedule), np.ones(4)
        )

    def test_unweighted_flow_loss_is_normalized(self):
        t = np.array([1e-3, 0.02, 0.5, 0.97], "float32")
        # Exactly 1 on rectified flow: its flow target is eps - x0.
        w = objectives.loss_weight("none", "flow", t, schedules.RectifiedFlowSchedule())
        self.assertAllClose(w, np.ones(4), rtol=1e-6)
        # With SD3's shift the target is u'(t) (eps - x0), u' from 3 at t = 0
        # down to 1/3 at t = 1: the weight is 1 / u'^2 where u' > 1, so the
        # loss there is that of a network predicting eps - x0, and 1 elsewhere.
        shifted = schedules.RectifiedFlowSchedule(shift=3.0)
        du = 3.0 / (1.0 + 2.0 * t.astype(np.float64)) ** 2
        w = objectives.loss_weight("none", "flow", t, shifted)
        self.assertAllClose(w, 1.0 / np.maximum(du**2, 1.0), rtol=1e-4)
        self.assertLess(float(_np(w)[0]), 0.2)
        self.assertEqual(float(_np(w)[-1]), 1.0)
        # On a VP schedule, where the target's mean square exceeds 1, the
        # weighted flow loss is twice the v loss.
        for schedule in (schedules.ScaledLinearSchedule(), schedules.LinearSchedule()):
            d_alpha, d_sigma = (_np(d) for d in schedule.alpha_sigma_derivatives(t))
            large = 0.5 * (d_alpha**2 + d_sigma**2) > 1.0
            self.assertTrue(large[0] and not large[-1], type(schedule).__name__)
            flow = _np(objectives.loss_weight("none", "flow", t, schedule)) * _np(
                objectives.x0_error_scale("flow", t, schedule))
            v = _np(objectives.x0_error_scale("v", t, schedule))
            self.assertAllClose(flow[large], 2.0 * v[large], rtol=2e-3)
            self.assertAllClose(
                _np(objectives.loss_weight("none", "flow", t, schedule))[~large], 1.0)
        # The other weightings are set in x0 space and do not change.
        schedule = schedules.ScaledLinearSchedule()
        snr = np.exp(_np(schedule.log_snr(t)))
        flow = _np(objectives.loss_weight("min_snr", "flow", t, schedule)) * _np(
            objectives.x0_error_scale("flow", t, schedule))
        self.assertAllClose(flow, np.minimum(snr, 5.0), rtol=1e-3)

    def test_elbo_weight_is_vdm_eq_17(self):
        for schedule in SCHEDULES:
            d = _np(schedule.d_log_snr(self.t))
            w = objectives.loss_weight("elbo", "epsilon", self.t, schedule)
            self.assertAllClose(w, -0.5 * d, rtol=1e-4)
            # Equal weighted losses across prediction spaces.
            w_x0 = _np(objectives.loss_weight("elbo", "x0", self.t, schedule))
            snr = np.exp(_np(schedule.log_snr(self.t)))
            self.assertAllClose(w_x0, -0.5 * d * snr, rtol=1e-3)

    def test_time_distributions(self):
        schedule = schedules.LinearSchedule()
        for name in objectives.TIME_DISTRIBUTIONS:
            t = _np(objectives.sample_time(name, 512, schedule, seed=3))
            self.assertEqual(t.shape, (512,))
            self.assertTrue(np.all(t >= schedule.t_min) and np.all(t <= 1.0), name)
        t = np.sort(_np(objectives.sample_time("low_discrepancy", 8, schedule, seed=1)))
        self.assertAllClose(np.diff(t), np.full(7, (1 - schedule.t_min) / 8), atol=1e-5)
        u = np.linspace(1e-3, 1 - 1e-6, 200001)
        density = _np(objectives.time_density("logit_normal", u, schedule))
        self.assertAllClose(np.trapezoid(density, u), 1.0, atol=2e-3)
        median = np.median(_np(objectives.sample_time("logit_normal", 4096, schedule, seed=2)))
        self.assertAllClose(median, 0.5, atol=0.03)

    def test_bad_names(self):
        schedule = schedules.CosineSchedule()
        with self.assertRaisesWithArgument(ValueError, "prediction", "'eps'", "epsilon"):
            objectives.from_x0_epsilon("eps", self.x0, self.eps, self.t, schedule)
        with self.assertRaisesWithArgument(ValueError, "weighting", "'snr'", "min_snr"):
            objectives.loss_weight("snr", "epsilon", self.t, schedule)
        with self.assertRaisesWithArgument(ValueError, "distribution", "'beta'"):
            objectives.sample_time("beta", 4, schedule)
        with self.assertRaisesWithArgument(ValueError, "gamma=0"):
            objectives.loss_weight("min_snr", "epsilon", self.t, schedule, gamma=0)


@pytest.mark.jax
class EDMObjectivesTest(TestCase):
    """EDM's training distribution and loss weight."""

    def test_edm_time_distribution(self):
        for schedule in (schedules.EDMSchedule(), schedules.CosineSchedule()):
            t = np.asarray(ops.convert_to_numpy(
                objectives.sample_time("edm", 20000, schedule, seed=0)), np.float64)
            self.assertGreaterEqual(t.min(), schedule.t_min - 1e-7)
            self.assertLessEqual(t.max(), 1.0)
            # ln(sigma / alpha) = -log_snr / 2 ~ N(-1.2, 1.2^2).
            log_sigma = -0.5 * np.asarray(ops.convert_to_numpy(
                schedule.log_snr(t.astype("float32"))), np.float64)
            inside = (t > schedule.t_min + 1e-6) & (t < 1.0 - 1e-6)
            self.assertAlmostEqual(np.median(log_sigma), -1.2, delta=0.05)
            self.assertAlmostEqual(np.std(log_sigma[inside]), 1.2, delta=0.06)
            # The density integrates to the mass inside (t_min, 1).
            grid = np.linspace(schedule.t_min, 1.0, 200001)[1:-1]
            density = np.asarray(ops.convert_to_numpy(
                objectives.time_density("edm", grid.astype("float32"), schedule)), np.float64)
            mass = np.trapezoid(density, grid)
            self.assertAlmostEqual(mass, inside.mean(), delta=0.01)

    def test_edm_weight(self):
        schedule = schedules.EDMSchedule(sigma_data=0.25)
        t = np.array([0.3, 0.6, 0.9], "float32")
        sigma = np.asarray(ops.convert_to_numpy(schedule.sigma(t)), np.float64)
        expected = (sigma**2 + 0.25**2) / (sigma * 0.25) ** 2
        x0_weight = objectives.loss_weight("edm", "x0", t, schedule)
        self.assertAllClose(x0_weight, expected, rtol=1e-4)
        # The same loss in epsilon space: divided by x0_error_scale = SNR.
        eps_weight = objectives.loss_weight("edm", "epsilon", t, schedule)
        self.assertAllClose(eps_weight, expected * sigma**2, rtol=1e-4)


@pytest.mark.jax
class ScorePredictionTest(TestCase):
    def test_score_is_minus_eps_over_sigma_and_finite_at_t_zero(self):
        schedule = schedules.CosineSchedule()
        rng = np.random.default_rng(0)
        x0 = rng.uniform(-1, 1, size=(3, 4)).astype("float32")
        eps = rng.normal(size=x0.shape).astype("float32")
        t = np.array([0.0, 0.3, 0.9], "float32")
        score = _np(objectives.from_x0_epsilon("score", x0, eps, t, schedule))
        sigma = np.maximum(_np(schedule.alpha_sigma(t)[1]), objectives.SCORE_MIN_SIGMA)
        self.assertAllClose(score, -eps / sigma[:, None], rtol=1e-5)
        self.assertTrue(np.all(np.isfinite(score)))
        # At t = 0 the score's x0 is x_t / alpha = x_t: finite, no division.
        x_t = schedule.add_noise(x0, eps, t)
        back, _ = objectives.to_x0_epsilon("score", score, x_t, t, schedule)
        self.assertAllClose(_np(back)[0], x0[0], atol=1e-5)

    def test_samplers_take_an_exact_score(self):
        from keras_diffusion import samplers
        from keras_diffusion.testing import GaussianMixture

        mixture = GaussianMixture.ring(num_modes=4)
        schedule = schedules.CosineSchedule()
        noise = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")
        for sampler in (samplers.DDIMSampler(), samplers.DPMSolverSampler(),
                        samplers.HeunSampler(), samplers.DDPMSampler()):
            out = {
                p: _np(sampler.sample(mixture.denoiser(schedule, p), noise, schedule=schedule,
                                      prediction=p, num_steps=4, seed=3))
                for p in ("epsilon", "score")
            }
            self.assertAllClose(out["score"], out["epsilon"], atol=2e-4,
                                msg=type(sampler).__name__)

    def test_fit_step_on_score(self):
        import keras_diffusion

        model = keras_diffusion.DiffusionModel(
            keras_diffusion.models.MLPDenoiser(data_dim=2, hidden_dim=16, num_layers=1),
            prediction="score", weighting="min_snr", seed=0,
        )
        points = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
        history = model.fit(points, batch_size=8, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        samples = model.generate(4, sampler="ddim", num_steps=2, seed=0, verbose=0)
        self.assertEqual(samples.shape, (4, 2))
        self.assertTrue(np.all(np.isfinite(samples)))
