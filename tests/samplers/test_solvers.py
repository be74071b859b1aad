"""UniPC, DEIS, iPNDM, DPM-Solver++ singlestep and SDE, Euler ancestral, EDM:
the sampler contract, and diffusers' updates re-implemented in float64
(tests/samplers/references.py, checked against diffusers 0.42.1 itself to
about 1e-6 on these grids).

The tests marked `jax` are backend-agnostic (CI also runs them with
KERAS_BACKEND=jax).
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.samplers.sampler import step_noise
from keras_diffusion.testing import GaussianMixture
from keras_diffusion.testing import TestCase
from tests.samplers import references

GMM = GaussianMixture.ring(num_modes=4, radius=1.0, std=0.3)
PREDICTIONS = ("epsilon", "x0", "v", "flow")


def _noise(batch=32, dim=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, dim)).astype("float32")


def to_np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _deterministic():
    return [
        samplers.UniPCSampler(order=1),
        samplers.UniPCSampler(order=2),
        samplers.UniPCSampler(order=3, solver_type="bh1"),
        samplers.UniPCSampler(order=3, corrector=False),
        samplers.DEISSampler(order=2),
        samplers.DEISSampler(order=3),
        samplers.IPNDMSampler(),
        samplers.DPMSolverSinglestepSampler(order=2),
        samplers.DPMSolverSinglestepSampler(order=3, solver_type="heun"),
        samplers.EDMSampler(),
    ]


def _stochastic():
    return [
        samplers.DPMSolverSDESampler(order=2),
        samplers.DPMSolverSDESampler(order=3, solver_type="heun"),
        samplers.EulerAncestralSampler(),
        samplers.EDMSampler(s_churn=20.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003),
    ]


@pytest.mark.jax
class ContractTest(TestCase):
    def test_get_names(self):
        expected = {
            "unipc": samplers.UniPCSampler,
            "deis": samplers.DEISSampler,
            "ipndm": samplers.IPNDMSampler,
            "dpm_solver_singlestep": samplers.DPMSolverSinglestepSampler,
            "dpm_solver_sde": samplers.DPMSolverSDESampler,
            "euler_ancestral": samplers.EulerAncestralSampler,
            "edm": samplers.EDMSampler,
        }
        for name, cls in expected.items():
            self.assertIsInstance(samplers.get(name), cls)
        sampler = samplers.get("unipc", order=3, solver_type="bh1", corrector=False)
        self.assertEqual((sampler.order, sampler.solver_type, sampler.corrector), (3, "bh1", False))

    def test_serialization(self):
        for sampler in _deterministic() + _stochastic() + [
            samplers.UniPCSampler(predict_x0=False, lower_order_final=False, clip_x0=1.0),
            samplers.DPMSolverSDESampler(order=3, third_order="diffusers", s_noise=0.5),
            samplers.IPNDMSampler(order=2),
        ]:
            revived = self.run_serialization_test(sampler)
            self.assertEqual(repr(revived), repr(sampler))

    def test_shapes_and_final_step(self):
        schedule = schedules.CosineSchedule()
        model_fn = GMM.denoiser(schedule, "epsilon")
        kwargs = dict(schedule=schedule, prediction="epsilon", timesteps=[0.5], seed=0)
        expected = samplers.DDIMSampler().sample(model_fn, _noise(), **kwargs)
        noise = _noise(3, 8).reshape(3, 2, 2, 2)
        for sampler in self.backend_cases(_deterministic() + _stochastic()):
            x = sampler.sample(lambda x, t: 0.1 * x, noise, schedule=schedule,
                               prediction="epsilon", num_steps=4, seed=0)
            self.assertEqual(tuple(x.shape), noise.shape, msg=repr(sampler))
            self.assertEqual(keras.backend.standardize_dtype(x.dtype), "float32")
            # One timestep: a single DDIM step (no churn at rho(t_0), the cap).
            self.assertAllClose(sampler.sample(model_fn, _noise(), **kwargs), expected,
                                atol=1e-6, msg=repr(sampler))

    def test_same_samples_for_every_prediction_type(self):
        noise = _noise(64)
        # Every sampler on the linear schedule with the two conversions
        # furthest apart; some on the cosine schedule with all four.
        cases = [(schedules.LinearSchedule(), _deterministic() + _stochastic(),
                  ("epsilon", "flow")),
                 (schedules.CosineSchedule(), _deterministic()[2:9:3] + _stochastic()[::3],
                  PREDICTIONS)]
        for schedule, sampler_list, predictions in cases:
            for sampler in self.backend_cases(sampler_list):
                times = sampler.timesteps(schedule, 9)  # One grid for all predictions.
                outs = [
                    to_np(sampler.sample(GMM.denoiser(schedule, p), noise, schedule=schedule,
                                         prediction=p, timesteps=times, seed=3))
                    for p in predictions
                ]
                # EDM's sampler works in rho = sigma / alpha, about 1e4 at the
                # cosine schedule's t = 1: its Heun and churn terms scale the
                # round-off of converted predictions by alpha_s * rho.
                edm = isinstance(sampler, samplers.EDMSampler)
                cosine = isinstance(schedule, schedules.CosineSchedule)
                atol = 2e-3 if edm and cosine else 5e-5
                for p, out in zip(predictions[1:], outs[1:]):
                    np.testing.assert_allclose(out, outs[0], atol=atol,
                                               err_msg=f"{sampler!r} {schedule!r} {p}")

    def test_rectified_flow(self):
        # alpha(1) = 0: no slope through t = 1, no churn there; finite samples
        # that agree across prediction types.
        schedule = schedules.RectifiedFlowSchedule()
        noise = _noise(64)
        # From t = 1 itself (the default grid starts at log-SNR -10.5, t = 0.9948).
        grid = [1.0 - i / 8 for i in range(8)]
        for sampler in self.backend_cases(
            _deterministic() + _stochastic() + [samplers.UniPCSampler(predict_x0=False)]
        ):
            outs = [
                to_np(sampler.sample(GMM.denoiser(schedule, p), noise, schedule=schedule,
                                     prediction=p, timesteps=grid, seed=1))
                for p in ("flow", "x0", "v")
            ]
            for out in outs[1:]:
                np.testing.assert_allclose(out, outs[0], atol=5e-5, err_msg=repr(sampler))

    def test_stochastic_samplers_are_seeded(self):
        schedule = schedules.LinearSchedule()
        model_fn = GMM.denoiser(schedule, "epsilon")
        for sampler in _stochastic():
            a, b, c = [
                to_np(sampler.sample(model_fn, _noise(), schedule=schedule,
                                     prediction="epsilon", num_steps=10, seed=seed))
                for seed in (1, 1, 2)
            ]
            np.testing.assert_array_equal(a, b)
            self.assertGreater(np.abs(a - c).max(), 1e-3, msg=repr(sampler))

    def test_nfe(self):
        schedule = schedules.CosineSchedule()
        for sampler, nfe in [(samplers.UniPCSampler(order=3), 6), (samplers.DEISSampler(), 6),
                             (samplers.EDMSampler(s_churn=5.0), 11)]:
            calls = []

            def model_fn(x, t):
                calls.append(1)
                return ops.zeros_like(x)

            self.skip_unless_tensorflow()  # Counts eager calls of the loop body.
            sampler.sample(model_fn, _noise(4), schedule=schedule, prediction="epsilon",
                           num_steps=6, seed=0)
            self.assertEqual(len(calls), nfe, msg=repr(sampler))
            self.assertEqual(getattr(sampler, "nfe", lambda n: n)(6), nfe)

    def test_bad_options(self):
        for cls in (samplers.UniPCSampler, samplers.DEISSampler,
                    samplers.DPMSolverSinglestepSampler, samplers.DPMSolverSDESampler):
            for bad in (0, 4, True):
                with self.assertRaisesWithArgument(ValueError, "order", bad):
                    cls(order=bad)
        with self.assertRaisesWithArgument(ValueError, "order", "5"):
            samplers.IPNDMSampler(order=5)
        with self.assertRaisesWithArgument(ValueError, "solver_type", "bh3"):
            samplers.UniPCSampler(solver_type="bh3")
        with self.assertRaisesWithArgument(ValueError, "solver_type", "euler"):
            samplers.DPMSolverSinglestepSampler(solver_type="euler")
        with self.assertRaisesWithArgument(ValueError, "third_order", "x"):
            samplers.DPMSolverSDESampler(third_order="x")
        with self.assertRaisesWithArgument(ValueError, "s_noise", "-1"):
            samplers.DPMSolverSDESampler(s_noise=-1)
        with self.assertRaisesWithArgument(ValueError, "eta", "-0.5"):
            samplers.EulerAncestralSampler(eta=-0.5)
        with self.assertRaisesWithArgument(ValueError, "s_churn", "-1"):
            samplers.EDMSampler(s_churn=-1)
        with self.assertRaisesWithArgument(ValueError, "s_tmin", "2.0", "s_tmax", "1.0"):
            samplers.EDMSampler(s_tmin=2.0, s_tmax=1.0)


def _np_model(model_fn, num_train=1000):
    def eps(x, k):
        t = np.full((len(x),), (k + 1) / num_train, "float32")
        return to_np(model_fn(x.astype("float32"), t))

    return eps


@pytest.mark.jax
class DiffusersFormulaTest(TestCase):
    """Against float64 re-implementations of diffusers' updates, on
    LinearSchedule's alphas_cumprod and the same discrete steps."""

    def _setup(self, spacing, num_steps):
        schedule = schedules.LinearSchedule()
        times = to_np(samplers.make_timesteps(schedule, num_steps, spacing))
        steps = list(np.round(times * 1000).astype(int) - 1)
        model_fn = GMM.denoiser(schedule, "epsilon")
        return schedule, steps, model_fn

    def _check(self, sampler, reference, cases, atol=2e-5, **sample_kwargs):
        for spacing, num_steps in cases:
            schedule, steps, model_fn = self._setup(spacing, num_steps)
            noise = _noise(64)
            expected = reference(_np_model(model_fn), schedule.alphas_cumprod, steps,
                                 noise.astype(np.float64))
            out = sampler.sample(model_fn, noise, schedule=schedule, prediction="epsilon",
                                 num_steps=num_steps, spacing=spacing, seed=11)
            self.assertAllClose(out, expected, atol=atol,
                                msg=f"{sampler!r} {spacing} {num_steps}")

    def test_unipc(self):
        configs = [(o, s, c) for o in (1, 2, 3) for s in ("bh1", "bh2") for c in (True, False)]
        for order, solver_type, corrector in self.backend_cases(configs, jax_stride=3):
            sampler = samplers.UniPCSampler(order, solver_type, corrector)
            ref = lambda *a, o=order, s=solver_type, c=corrector: (  # noqa: E731
                references.unipc(*a, o, s, c))
            case = ("trailing", 10) if corrector else ("leading", 5)
            self._check(sampler, ref, [case])
        # The noise form amplifies float32 round-off at few steps (diffusers'
        # own float32 run differs from float64 by about 1e-4 at 5 steps).
        sampler = samplers.UniPCSampler(order=3, predict_x0=False)
        ref = lambda *a: references.unipc(*a, 3, "bh2", True, False)  # noqa: E731
        self._check(sampler, ref, [("trailing", 8), ("linspace", 20)], atol=1e-4)

    def test_deis(self):
        for order in (1, 2, 3):
            ref = lambda *a, o=order: references.deis(*a, o)  # noqa: E731
            self._check(samplers.DEISSampler(order), ref, self.backend_cases(
                [("trailing", 10), ("leading", 20), ("linspace", 6)], jax_stride=3))

    def test_ipndm(self):
        for order in (2, 4):
            ref = lambda *a, o=order: references.ipndm(*a, o)  # noqa: E731
            self._check(samplers.IPNDMSampler(order), ref, [("trailing", 10), ("leading", 7)])

    def test_dpm_solver_singlestep(self):
        for order in (2, 3):
            for solver_type in ("midpoint", "heun"):
                ref = lambda *a, o=order, s=solver_type: (  # noqa: E731
                    references.dpm_singlestep(*a, o, s))
                cases = [("trailing", 6), ("leading", 11)] if solver_type == "heun" else [
                    ("trailing", 7), ("linspace", 20)]
                self._check(samplers.DPMSolverSinglestepSampler(order, solver_type), ref,
                            self.backend_cases(cases))

    def _noises(self, num_steps, batch=64, seed=11):
        return [to_np(step_noise((batch, 2), seed, i)) for i in range(num_steps)]

    def test_dpm_solver_sde(self):
        for order, solver_type, third in [(1, "midpoint", "taylor"), (2, "midpoint", "taylor"),
                                          (2, "heun", "taylor"), (3, "midpoint", "diffusers"),
                                          (3, "midpoint", "taylor")]:
            factor, half = (2.0, 0.5) if third == "taylor" else (1.0, -0.5)
            for spacing, n in [("trailing", 10 if order < 3 else 20)]:
                noises = self._noises(n)
                ref = lambda *a, o=order, s=solver_type, f=factor, h=half, z=noises: (  # noqa: E731
                    references.dpm_sde(*a, o, z, s, f, h))
                sampler = samplers.DPMSolverSDESampler(order, solver_type, third)
                self._check(sampler, ref, [(spacing, n)])

    def test_euler_ancestral(self):
        for n in (5, 12):
            noises = self._noises(n)
            ref = lambda *a, z=noises: references.euler_ancestral(*a, z)  # noqa: E731
            self._check(samplers.EulerAncestralSampler(), ref, [("trailing", n)])

    def test_euler_ancestral_eta_one_is_ddpm_ancestral(self):
        # Same noise, same grid: Euler ancestral (eta = 1) and DDIM (eta = 1)
        # are one update written two ways.
        schedule = schedules.CosineSchedule()
        model_fn = GMM.denoiser(schedule, "v")
        kwargs = dict(schedule=schedule, prediction="v", num_steps=10, seed=4)
        a = samplers.EulerAncestralSampler().sample(model_fn, _noise(), **kwargs)
        b = samplers.DDIMSampler(eta=1.0).sample(model_fn, _noise(), **kwargs)
        self.assertAllClose(a, b, atol=1e-4)


class CompiledTest(TestCase):
    def test_same_result_eager_and_compiled(self):
        self.skip_unless_tensorflow()
        import tensorflow as tf

        schedule = schedules.CosineSchedule()
        model_fn = GMM.denoiser(schedule, "v")
        noise = _noise(16)
        for sampler in [samplers.UniPCSampler(order=3), samplers.DPMSolverSDESampler(order=3),
                        samplers.EDMSampler(s_churn=20.0, s_tmin=0.05, s_tmax=50.0)]:

            def run(noise, sampler=sampler):
                return sampler.sample(model_fn, noise, schedule=schedule, prediction="v",
                                      num_steps=6, seed=7)

            eager = run(noise)
            for jit in (False, True):
                compiled = tf.function(run, jit_compile=jit, autograph=False)(noise)
                # EDM's rho reaches 1e4 on this schedule (see above): relative.
                self.assertAllClose(compiled, eager, atol=5e-5, rtol=1e-5,
                                    msg=f"{sampler!r} jit={jit}")

    def test_num_steps_as_tensor(self):
        self.skip_unless_tensorflow()
        import tensorflow as tf

        schedule = schedules.LinearSchedule()
        model_fn = GMM.denoiser(schedule, "epsilon")
        noise = _noise(8)
        for sampler in [samplers.UniPCSampler(order=3),
                        samplers.DPMSolverSinglestepSampler(order=3),
                        samplers.EDMSampler(s_churn=10.0)]:
            run = tf.function(lambda n, s=sampler: s.sample(
                model_fn, noise, schedule=schedule, prediction="epsilon", num_steps=n, seed=3),
                autograph=False)
            for n in (3, 8):
                expected = sampler.sample(model_fn, noise, schedule=schedule,
                                          prediction="epsilon", num_steps=n, seed=3)
                self.assertAllClose(run(tf.constant(n)), expected, atol=1e-5, msg=repr(sampler))


@pytest.mark.jax
class EDMAlgorithmTest(TestCase):
    def test_edm_sampler_is_algorithm_2(self):
        # On the EDM schedule with the karras grid: Karras et al. (2022),
        # Algorithm 2 written out in float64 (references.edm), same noise.
        schedule = schedules.EDMSchedule()
        gmm = GaussianMixture.ring(num_modes=4, radius=1.0, std=0.3)
        model_fn = gmm.denoiser(schedule, "x0")

        def denoise(x, sigma):
            t = np.full((len(x),), (sigma / 80.0) ** (1 / 7), "float32")
            return to_np(model_fn(x.astype("float32"), t))

        n = 12
        times = samplers.make_timesteps(schedule, n, "karras")
        sigmas = list(to_np(schedule.sigma(times))) + [0.0]
        noise = _noise(64)
        for options in [{}, dict(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003),
                        dict(s_churn=80.0)]:
            noises = [to_np(step_noise((64, 2), 9, i)) for i in range(n)]
            expected = references.edm(denoise, sigmas, 80.0 * noise.astype(np.float64),
                                      noises, **options)
            out = samplers.EDMSampler(**options).sample(
                model_fn, noise, schedule=schedule, prediction="x0", num_steps=n,
                spacing="karras", seed=9)
            self.assertAllClose(out, expected, atol=1e-4, rtol=1e-5, msg=str(options))
