"""Sampler contract, bad input, prediction types, independent reference
implementations and compiled-graph checks.

The tests marked `jax` are backend-agnostic: CI also runs them with
KERAS_BACKEND=jax, so this module does not import TensorFlow at top level.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.testing import GaussianMixture
from keras_diffusion.testing import TestCase

GMM = GaussianMixture.ring(num_modes=4, radius=1.0, std=0.3)
PREDICTIONS = ("epsilon", "x0", "v", "flow")


def _noise(batch=32, dim=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, dim)).astype("float32")


def _some_samplers():
    """One of each kind: the heavier tests run these (each JAX call compiles)."""
    return [
        samplers.DDPMSampler(variance="fixed_large"),
        samplers.DDIMSampler(eta=1.0),
        samplers.DPMSolverSampler(order=3),
        samplers.DPMSolverSampler(order=2, algorithm="dpmsolver"),
        samplers.HeunSampler(),
    ]


def _all_samplers():
    return [
        samplers.DDPMSampler(),
        samplers.DDPMSampler(variance="fixed_large"),
        samplers.DDIMSampler(),
        samplers.DDIMSampler(eta=1.0),
        samplers.DPMSolverSampler(order=1),
        samplers.DPMSolverSampler(order=2),
        samplers.DPMSolverSampler(order=3),
        samplers.DPMSolverSampler(order=2, algorithm="dpmsolver"),
        samplers.DPMSolverSampler(order=3, algorithm="dpmsolver", third_order="diffusers"),
        samplers.EulerSampler(),
        samplers.HeunSampler(),
    ]


@pytest.mark.jax
class SamplerContractTest(TestCase):
    def test_get_names(self):
        expected = {
            "ddpm": samplers.DDPMSampler,
            "ddim": samplers.DDIMSampler,
            "dpm_solver": samplers.DPMSolverSampler,
            "euler": samplers.EulerSampler,
            "heun": samplers.HeunSampler,
            "ode": samplers.ODESampler,
        }
        for name, cls in expected.items():
            self.assertIsInstance(samplers.get(name), cls)
        sampler = samplers.get("dpm_solver", order=3, algorithm="dpmsolver")
        self.assertEqual((sampler.order, sampler.algorithm), (3, "dpmsolver"))

    def test_serialization(self):
        for sampler in _all_samplers() + [
            samplers.ODESampler(rtol=1e-4, atol=1e-6, max_num_steps=100),
            samplers.DDIMSampler(clip_x0=1.0),
        ]:
            revived = self.run_serialization_test(sampler)
            self.assertEqual(repr(revived), repr(sampler))
            self.assertIs(samplers.get(revived), revived)

    def test_shapes_and_dtype(self):
        schedule = schedules.LinearSchedule()
        noise = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype("float32")
        model_fn = lambda x, t: 0.1 * x  # noqa: E731
        for sampler in _some_samplers() + [samplers.EulerSampler()]:
            x = sampler.sample(
                model_fn, noise, schedule=schedule, prediction="epsilon", num_steps=4, seed=0
            )
            self.assertEqual(tuple(x.shape), noise.shape, msg=repr(sampler))
            self.assertEqual(keras.backend.standardize_dtype(x.dtype), "float32")

    def test_model_sees_the_timesteps(self):
        self.skip_unless_tensorflow()  # Reads t eagerly inside the loop.
        schedule = schedules.CosineSchedule()
        timesteps = np.array([1.0, 0.6, 0.3, 0.05], "float32")
        for sampler, expected in [
            (samplers.DDIMSampler(), timesteps),
            (samplers.DPMSolverSampler(order=3), timesteps),
            (samplers.EulerSampler(), timesteps),
            # Heun: predictor at t_k, corrector at t_{k+1}; no corrector at 0.
            (samplers.HeunSampler(), [1.0, 0.6, 0.6, 0.3, 0.3, 0.05, 0.05]),
        ]:
            seen = []

            def model_fn(x, t):
                seen.append(float(ops.convert_to_numpy(t)[0]))
                return ops.zeros_like(x)

            sampler.sample(
                model_fn, _noise(4), schedule=schedule, prediction="epsilon",
                timesteps=timesteps, seed=0,
            )
            self.assertAllClose(seen, expected, atol=1e-6)
        self.assertEqual(samplers.HeunSampler.nfe(4), 7)

    def test_default_num_steps(self):
        self.assertEqual(samplers.DDPMSampler.default_num_steps, 1000)
        self.assertEqual(samplers.DPMSolverSampler.default_num_steps, 20)
        schedule = schedules.LinearSchedule()
        self.assertEqual(
            tuple(samplers.DDPMSampler().timesteps(schedule).shape), (1000,)
        )
        ode_times = samplers.ODESampler().timesteps(schedule)
        self.assertAllClose(ode_times, [1.0, 1e-3])

    def test_ddpm_matches_ddpm_paper_on_its_grid(self):
        # 1000 steps on the T = 1000 grid: DDPM's algorithm 2 with
        # sigma^2 = beta-tilde (fixed_small) or beta (fixed_large).
        schedule = schedules.LinearSchedule()
        betas = schedule.betas_np
        abar = schedule.alphas_cumprod
        for k in (999, 500, 3, 1):
            s, t = k / 1000.0, (k + 1) / 1000.0
            coef_x_t, coef_x0, var = [
                float(ops.convert_to_numpy(c))
                for c in schedule.posterior_coefficients(s, t)
            ]
            beta_tilde = (1 - abar[k - 1]) / (1 - abar[k]) * betas[k]
            self.assertAllClose(var, beta_tilde, rtol=1e-4)
            self.assertAllClose(
                coef_x0, np.sqrt(abar[k - 1]) * betas[k] / (1 - abar[k]), rtol=1e-4
            )
            self.assertAllClose(
                coef_x_t,
                np.sqrt(1 - betas[k]) * (1 - abar[k - 1]) / (1 - abar[k]),
                rtol=1e-4,
            )
            large = float(ops.convert_to_numpy(schedule.transition(s, t)[1]))
            self.assertAllClose(large, betas[k], rtol=1e-4)

    def test_stochastic_samplers_are_seeded(self):
        schedule = schedules.LinearSchedule()
        model_fn = GMM.denoiser(schedule, "epsilon")
        for sampler in [samplers.DDPMSampler(), samplers.DDIMSampler(eta=0.5)]:
            a, b, c = [
                sampler.sample(
                    model_fn, _noise(), schedule=schedule, prediction="epsilon",
                    num_steps=10, seed=seed,
                )
                for seed in (1, 1, 2)
            ]
            self.assertAllClose(a, b, atol=0, rtol=0)
            self.assertGreater(float(np.abs(to_np(a) - to_np(c)).max()), 1e-3)

    def test_final_step_is_ddim(self):
        # With a single timestep every deterministic sampler is one DDIM step.
        schedule = schedules.CosineSchedule()
        model_fn = GMM.denoiser(schedule, "epsilon")
        kwargs = dict(schedule=schedule, prediction="epsilon", timesteps=[0.5], seed=0)
        expected = samplers.DDIMSampler().sample(model_fn, _noise(), **kwargs)
        for sampler in self.backend_cases(_some_samplers() + [samplers.EulerSampler()]):
            self.assertAllClose(
                sampler.sample(model_fn, _noise(), **kwargs), expected, atol=1e-6,
                msg=repr(sampler),
            )


def to_np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


@pytest.mark.jax
class PredictionTypesTest(TestCase):
    """The four prediction types give the same samples (same noise)."""

    def test_same_samples_for_every_prediction_type(self):
        noise = _noise(64)
        cases = [(schedules.LinearSchedule(), _some_samplers())]
        cases.append((schedules.CosineSchedule(), _some_samplers()[2:4]))
        for schedule, sampler_list in cases:
            for sampler in self.backend_cases(sampler_list):
                # One grid for all (noise predictions' default grid starts
                # later, `spacing.start_log_snr_for`).
                times = sampler.timesteps(schedule, 12)
                outs = [
                    to_np(
                        sampler.sample(
                            GMM.denoiser(schedule, p), noise, schedule=schedule,
                            prediction=p, timesteps=times, seed=3,
                        )
                    )
                    for p in PREDICTIONS
                ]
                # The noise-prediction DPM-Solver multiplies eps by e^h ~
                # alpha_s / alpha_t, about 1e4 on the cosine schedule's first
                # step: it amplifies the round-off of converted predictions.
                noise_form = getattr(sampler, "algorithm", "") == "dpmsolver"
                atol = 1e-3 if noise_form else 2e-5
                for p, out in zip(PREDICTIONS[1:], outs[1:]):
                    np.testing.assert_allclose(
                        out, outs[0], atol=atol,
                        err_msg=f"{sampler!r} {schedule!r} {p}",
                    )

    def test_rectified_flow_without_epsilon(self):
        # At t = 1, alpha = 0: "epsilon" cannot give x0 there, the others can.
        schedule = schedules.RectifiedFlowSchedule()
        noise = _noise(64)
        for sampler in [samplers.HeunSampler(), samplers.DPMSolverSampler(order=3)]:
            outs = [
                to_np(sampler.sample(GMM.denoiser(schedule, p), noise, schedule=schedule,
                                     prediction=p, num_steps=10))
                for p in ("flow", "x0", "v")
            ]
            for out in outs[1:]:
                np.testing.assert_allclose(out, outs[0], atol=2e-5, err_msg=repr(sampler))

    def test_euler_is_flow_matching_euler(self):
        # On rectified flow with a "flow" model: x <- x + (s - t) * model(x, t).
        schedule = schedules.RectifiedFlowSchedule()
        model_fn = GMM.denoiser(schedule, "flow")
        times = [1.0, 0.75, 0.5, 0.25]
        x = _noise()
        expected = x.copy()
        for t, s in zip(times[:-1], times[1:]):
            v = to_np(model_fn(expected.astype("float32"), np.full((len(x),), t, "float32")))
            expected = expected + (s - t) * v
        # The final step from 0.25 to 0 (sigma(0) = 0) returns x0 = x - t v.
        v = to_np(model_fn(expected.astype("float32"), np.full((len(x),), 0.25, "float32")))
        expected = expected - 0.25 * v
        out = samplers.EulerSampler().sample(
            model_fn, x, schedule=schedule, prediction="flow", timesteps=times
        )
        self.assertAllClose(out, expected, atol=1e-5)


def _np_model(model_fn, num_train):
    """The model as a float64 numpy function of (x, discrete step k)."""

    def eps(x, k):
        t = np.full((len(x),), (k + 1) / num_train, "float32")
        return to_np(model_fn(x.astype("float32"), t))

    return eps


def _diffusers_ddim(eps_fn, abar, steps, x):
    """diffusers' DDIMScheduler.step (eta = 0), DDIM eq. 12, in float64.

    `steps` are the discrete steps k (decreasing); the last one steps to
    alpha_bar = 1 (set_alpha_to_one).
    """
    for i, k in enumerate(steps):
        a_t = abar[k]
        a_prev = abar[steps[i + 1]] if i + 1 < len(steps) else 1.0
        e = eps_fn(x, k)
        x0 = (x - np.sqrt(1 - a_t) * e) / np.sqrt(a_t)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * e
    return x


def _diffusers_dpm(eps_fn, abar, steps, x, order, algorithm="dpmsolver++",
                   lower_order_final=True, factor_d2=1.0):
    """DPMSolverMultistepScheduler (final_sigmas_type="zero"), float64.

    Written from DPM-Solver++ (Lu et al., 2022, Algorithm 2) and diffusers'
    third-order update; `factor_d2=2` is the Taylor-consistent D2.
    """
    alpha = np.sqrt(abar)
    sigma = np.sqrt(1 - abar)
    lam = np.log(alpha) - np.log(sigma)
    n = len(steps)
    outputs, lams = [], []
    for i, k in enumerate(steps):
        e = eps_fn(x, k)
        x0 = (x - sigma[k] * e) / alpha[k]
        m0 = x0 if algorithm == "dpmsolver++" else e
        outputs.append(m0)
        lams.append(lam[k])
        if i == n - 1:  # to sigma = 0: first order, x = x0
            x = x0
            break
        kt = steps[i + 1]
        a_t, s_t, a_s, s_s = alpha[kt], sigma[kt], alpha[k], sigma[k]
        h = lam[kt] - lam[k]
        use = min(order, i + 1)
        if lower_order_final and n < 15 and i == n - 2:
            use = min(use, 2)
        if use >= 2:
            r0 = (lams[-1] - lams[-2]) / h
            d1_0 = (outputs[-1] - outputs[-2]) / r0
        if use == 3:
            r1 = (lams[-2] - lams[-3]) / h
            d1_1 = (outputs[-2] - outputs[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = factor_d2 * (d1_0 - d1_1) / (r0 + r1)
        if algorithm == "dpmsolver++":
            phi1 = np.expm1(-h)
            x_new = (s_t / s_s) * x - a_t * phi1 * m0
            if use == 2:
                x_new = x_new - 0.5 * a_t * phi1 * d1_0
            elif use == 3:
                x_new = (x_new + a_t * (phi1 / h + 1.0) * d1
                         - a_t * ((phi1 + h) / h**2 - 0.5) * d2)
        else:
            phi1 = np.expm1(h)
            x_new = (a_t / a_s) * x - s_t * phi1 * m0
            if use == 2:
                x_new = x_new - 0.5 * s_t * phi1 * d1_0
            elif use == 3:
                x_new = (x_new - s_t * (phi1 / h - 1.0) * d1
                         - s_t * ((phi1 - h) / h**2 - 0.5) * d2)
        x = x_new
    return x


@pytest.mark.jax
class IndependentImplementationTest(TestCase):
    """DDIM and DPM-Solver against float64 re-implementations of diffusers'
    formulas on LinearSchedule's alphas_cumprod, on the same discrete steps."""

    def _setup(self, spacing, num_steps):
        schedule = schedules.LinearSchedule()
        times = to_np(samplers.make_timesteps(schedule, num_steps, spacing))
        steps = np.round(times * 1000).astype(int) - 1
        model_fn = GMM.denoiser(schedule, "epsilon")
        return schedule, times, steps, model_fn

    def test_ddim_matches_diffusers_formula(self):
        for spacing, num_steps in [("leading", 10), ("trailing", 20), ("linspace", 7)]:
            schedule, times, steps, model_fn = self._setup(spacing, num_steps)
            noise = _noise(64)
            expected = _diffusers_ddim(
                _np_model(model_fn, 1000), schedule.alphas_cumprod, steps,
                noise.astype(np.float64),
            )
            out = samplers.DDIMSampler().sample(
                model_fn, noise, schedule=schedule, prediction="epsilon",
                num_steps=num_steps, spacing=spacing,
            )
            self.assertAllClose(out, expected, atol=2e-5, msg=spacing)

    def test_dpm_solver_matches_diffusers_formula(self):
        cases = [
            ("trailing", 10, 2, "dpmsolver++", "taylor"),
            ("leading", 20, 2, "dpmsolver++", "taylor"),
            ("trailing", 20, 1, "dpmsolver++", "taylor"),
            ("trailing", 10, 2, "dpmsolver", "taylor"),
            ("trailing", 10, 3, "dpmsolver++", "diffusers"),
            ("trailing", 20, 3, "dpmsolver++", "diffusers"),
            ("trailing", 20, 3, "dpmsolver", "diffusers"),
            ("trailing", 20, 3, "dpmsolver++", "taylor"),
            ("linspace", 12, 3, "dpmsolver", "taylor"),
        ]
        for spacing, num_steps, order, algorithm, third in cases:
            schedule, times, steps, model_fn = self._setup(spacing, num_steps)
            noise = _noise(64)
            expected = _diffusers_dpm(
                _np_model(model_fn, 1000), schedule.alphas_cumprod, steps,
                noise.astype(np.float64), order, algorithm,
                factor_d2=2.0 if third == "taylor" else 1.0,
            )
            sampler = samplers.DPMSolverSampler(
                order=order, algorithm=algorithm, third_order=third
            )
            out = sampler.sample(
                model_fn, noise, schedule=schedule, prediction="epsilon",
                num_steps=num_steps, spacing=spacing,
            )
            self.assertAllClose(
                out, expected, atol=2e-5, msg=f"{spacing} {num_steps} {sampler!r}"
            )


@pytest.mark.jax
class BadInputTest(TestCase):
    def _sample(self, sampler, **kwargs):
        schedule = kwargs.pop("schedule", schedules.LinearSchedule())
        model_fn = kwargs.pop("model_fn", GMM.denoiser(schedule, "epsilon"))
        noise = kwargs.pop("noise", _noise(4))
        kwargs.setdefault("prediction", "epsilon")
        return sampler.sample(model_fn, noise, schedule=schedule, seed=0, **kwargs)

    def test_num_steps(self):
        for sampler in _all_samplers():
            for bad in (0,):
                with self.assertRaisesWithArgument(ValueError, "num_steps", bad):
                    self._sample(sampler, num_steps=bad)

    def test_timesteps(self):
        for sampler in _all_samplers():
            for bad in ([0.5, 0.7], [1.0, 0.5, 0.5], [1.0, 0.0], [1.5, 0.5],
                        [1.0, -0.1], [[1.0, 0.5]], [1.0, float("nan")]):
                with self.assertRaisesRegex(ValueError, "timesteps"):
                    self._sample(sampler, timesteps=bad)

    def test_unknown_names(self):
        with self.assertRaisesWithArgument(ValueError, "rk4", "ddim", "dpm_solver", "heun"):
            samplers.get("rk4")
        with self.assertRaisesWithArgument(ValueError, "variance", "fixed_medium", "fixed_small"):
            samplers.DDPMSampler(variance="fixed_medium")
        with self.assertRaisesWithArgument(ValueError, "algorithm", "dpm++", "dpmsolver"):
            samplers.DPMSolverSampler(algorithm="dpm++")
        with self.assertRaisesWithArgument(ValueError, "solver", "adams"):
            samplers.DPMSolverSampler(solver="adams")
        with self.assertRaisesWithArgument(ValueError, "third_order", "x"):
            samplers.DPMSolverSampler(third_order="x")
        with self.assertRaisesWithArgument(ValueError, "method", "rk45", "dormand_prince"):
            samplers.ODESampler(method="rk45")
        with self.assertRaisesWithArgument(ValueError, "spacing", "cubic", "karras"):
            self._sample(samplers.EulerSampler(), num_steps=4, spacing="cubic")
        with self.assertRaisesWithArgument(ValueError, "prediction", "noise", "epsilon"):
            self._sample(samplers.HeunSampler(), num_steps=4, prediction="noise")

    def test_options(self):
        for bad in (-0.1, 1.5):
            with self.assertRaisesWithArgument(ValueError, "eta", bad):
                samplers.DDIMSampler(eta=bad)
        for bad in (0, 4, 2.5, True):
            with self.assertRaisesWithArgument(ValueError, "order", bad):
                samplers.DPMSolverSampler(order=bad)
        with self.assertRaisesWithArgument(ValueError, "rtol", "0.0"):
            samplers.ODESampler(rtol=0.0)
        with self.assertRaisesWithArgument(ValueError, "atol", "-1"):
            samplers.ODESampler(atol=-1.0)
        with self.assertRaisesWithArgument(ValueError, "max_num_steps", "0"):
            samplers.ODESampler(max_num_steps=0)

    def test_shape_mismatch(self):
        def model_fn(x, t):
            return ops.concatenate([x, x], axis=-1)

        for sampler in _some_samplers() + [samplers.EulerSampler()]:
            with self.assertRaisesWithArgument(ValueError, "model_fn", r"\(4, 2\)", r"\(4, 4\)"):
                self._sample(sampler, model_fn=model_fn, num_steps=3)
        with self.assertRaisesWithArgument(ValueError, "noise", r"\(4,\)"):
            self._sample(samplers.EulerSampler(), noise=np.zeros(4, "float32"), num_steps=3)

    def test_nan_from_model(self):
        def model_fn(x, t):
            return x * float("nan")

        for sampler in _some_samplers() + [samplers.EulerSampler()]:
            with self.assertRaisesRegex(ValueError, "model_fn.*NaN"):
                self._sample(sampler, model_fn=model_fn, num_steps=3)


class TensorFlowOnlyTest(TestCase):
    """Compiled graphs (tf.function, XLA on and off) and the ODE sampler."""

    def test_same_result_eager_and_compiled(self):
        self.skip_unless_tensorflow()
        import tensorflow as tf

        schedule = schedules.CosineSchedule()
        model_fn = GMM.denoiser(schedule, "v")
        noise = _noise(16)
        for sampler in [
            samplers.DDPMSampler(),
            samplers.DDIMSampler(eta=0.5),
            samplers.DPMSolverSampler(order=3),
            samplers.EulerSampler(),
            samplers.HeunSampler(),
        ]:

            def run(noise):
                return sampler.sample(
                    model_fn, noise, schedule=schedule, prediction="v",
                    num_steps=6, seed=7,
                )

            eager = run(noise)
            for jit in (False, True):
                # step_noise is counter-based: XLA draws the same noise.
                compiled = tf.function(run, jit_compile=jit, autograph=False)(noise)
                self.assertAllClose(compiled, eager, atol=2e-5, msg=f"{sampler!r} jit={jit}")

    def test_num_steps_as_tensor(self):
        # Export passes the number of steps as a tensor: one graph for all N.
        self.skip_unless_tensorflow()
        import tensorflow as tf

        schedule = schedules.LinearSchedule()
        model_fn = GMM.denoiser(schedule, "epsilon")
        sampler = samplers.DPMSolverSampler(order=2)
        noise = _noise(8)

        @tf.function(autograph=False)
        def run(n):
            return sampler.sample(
                model_fn, noise, schedule=schedule, prediction="epsilon", num_steps=n
            )

        for n in (3, 8):
            expected = sampler.sample(
                model_fn, noise, schedule=schedule, prediction="epsilon", num_steps=n
            )
            self.assertAllClose(run(tf.constant(n)), expected, atol=1e-5)

    def test_traced_timesteps_and_num_steps_are_checked(self):
        # Inside a tf.function the grid is a tensor: it is checked when the graph runs.
        self.skip_unless_tensorflow()
        import tensorflow as tf

        schedule = schedules.CosineSchedule()
        model_fn = GMM.denoiser(schedule, "epsilon")
        sampler = samplers.DDIMSampler()
        noise = _noise(4)
        kwargs = dict(schedule=schedule, prediction="epsilon", seed=0)
        run_times = tf.function(lambda ts: sampler.sample(model_fn, noise, timesteps=ts, **kwargs))
        run_steps = tf.function(lambda n: sampler.sample(model_fn, noise, num_steps=n, **kwargs))
        good = [0.9, 0.5, 0.1]
        self.assertAllClose(
            run_times(tf.constant(good)), sampler.sample(model_fn, noise, timesteps=good, **kwargs),
            atol=1e-5,
        )
        for bad, message in [
            ([0.5, 0.9], "strictly decreasing"),
            ([1.5, 0.5], r"lie in \(0, 1\]"),
            ([float("nan"), 0.5], "NaN"),
        ]:
            with self.assertRaisesRegex(tf.errors.InvalidArgumentError, message):
                run_times(tf.constant(bad))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "`num_steps` must be at least 1"):
            run_steps(tf.constant(0))
        self.assertEqual(run_steps(tf.constant(2)).shape, noise.shape)

    def test_ode_sampler(self):
        self.skip_unless_tensorflow()
        schedule = schedules.CosineSchedule()
        model_fn = GMM.denoiser(schedule, "epsilon")
        noise = _noise(32)
        loose, info_loose = samplers.ODESampler(rtol=1e-3, atol=1e-3).solve(
            model_fn, noise, schedule=schedule, prediction="epsilon"
        )
        tight, info_tight = samplers.ODESampler(rtol=1e-6, atol=1e-6).solve(
            model_fn, noise, schedule=schedule, prediction="epsilon"
        )
        self.assertEqual(int(info_tight["status"]), 0)
        self.assertGreater(int(info_tight["nfe"]), int(info_loose["nfe"]))
        self.assertGreater(int(info_loose["nfe"]), 6)
        self.assertLess(float(np.abs(to_np(loose) - to_np(tight)).max()), 0.05)
        # `sample` gives the same as `solve`; other prediction types agree.
        sampled = samplers.ODESampler(rtol=1e-6, atol=1e-6).sample(
            GMM.denoiser(schedule, "v"), noise, schedule=schedule, prediction="v",
            timesteps=samplers.ODESampler().timesteps(schedule, prediction="epsilon"),
        )
        self.assertAllClose(sampled, tight, atol=1e-3)
        # DPM-Solver++(3M) with many steps lands close to the ODE solution.
        dpm = samplers.DPMSolverSampler(order=3).sample(
            model_fn, noise, schedule=schedule, prediction="epsilon",
            num_steps=50, spacing="log_snr",
        )
        self.assertLess(float(np.abs(to_np(dpm) - to_np(tight)).max()), 0.02)

    def test_ode_sampler_nan_and_tf_function(self):
        self.skip_unless_tensorflow()
        import tensorflow as tf

        schedule = schedules.LinearSchedule()
        with self.assertRaisesRegex(ValueError, "model_fn.*NaN"):
            samplers.ODESampler(rtol=1e-2, atol=1e-2, max_num_steps=20).sample(
                lambda x, t: x * float("nan"), _noise(4), schedule=schedule,
                prediction="epsilon",
            )
        model_fn = GMM.denoiser(schedule, "epsilon")
        sampler = samplers.ODESampler(rtol=1e-4, atol=1e-4)
        kwargs = dict(schedule=schedule, prediction="epsilon", timesteps=[0.9, 0.05])
        eager = sampler.sample(model_fn, _noise(8), **kwargs)
        graph = tf.function(lambda n: sampler.sample(model_fn, n, **kwargs))(_noise(8))
        self.assertAllClose(graph, eager, atol=1e-5)
