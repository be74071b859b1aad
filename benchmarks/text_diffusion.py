"""Masked diffusion (MDLM) and uniform-noise diffusion (D3PM-uniform in
continuous time) on text: ELBO bits/char against an exact entropy rate and
against an autoregressive Transformer peer trained in the same run.

(a) markov: a random order-2 Markov chain over 27 symbols (26 letters and a
    space) with its entropy rate computed exactly (the stationary
    distribution of the pair chain). MDLM's ELBO in bits/char on fresh
    sequences vs the entropy rate (and vs the exact entropy per character of
    a window of `sequence_length`, which includes the first two symbols'
    entropy), and the AR peer's bits/char.
(b) pydoc: CPython's `pydoc_data.topics` text (no download), 90/10 split in
    `sequence_length`-character chunks; ELBO bpc on the held-out 10%,
    samples, the AR peer's bpc, generation characters/s of both.

All models have the same width, depth and heads (the peer: the same
pre-LN blocks with a causal mask instead of adaLN-Zero; the uniform model is
`MaskedDiffusionLM(process="uniform")`, time-conditioned) and train for the
same wall-clock time, one after the other. Run:

    nice -n 10 python benchmarks/text_diffusion.py --part all --seconds 150

Results: benchmarks/results/text_diffusion.{json,md} and
text_diffusion_samples.txt.
"""

import argparse
import json
import math
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import keras_diffusion  # noqa: E402
from keras_diffusion.models import MaskedDiffusionLM  # noqa: E402
from keras_diffusion.utils.weight_average import WeightAverage  # noqa: E402
from keras_diffusion.utils.weight_average import averages_assigned  # noqa: E402

PROCESS_KEYS = {"masked": "mdlm", "uniform": "uniform"}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SYMBOLS = list("abcdefghijklmnopqrstuvwxyz ")
# XLA for both models' train steps (on this CPU 1.6x faster than without).
JIT = True


# ----------------------------------------------------------------------
# The source of known entropy
# ----------------------------------------------------------------------
def markov_chain(num_symbols=27, concentration=0.2, seed=0):
    """A random order-2 chain: P[a, b] is the distribution of x_t given
    (x_{t-2}, x_{t-1}) = (a, b), each row Dirichlet(concentration)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(num_symbols, concentration), size=(num_symbols, num_symbols))


def entropy_rate(P):
    """Exact entropy rate (bits/symbol) and the stationary pair distribution."""
    k = P.shape[0]
    # The pair chain (a, b) -> (b, c) with probability P[a, b, c].
    T = np.zeros((k * k, k * k))
    for a in range(k):
        for b in range(k):
            T[a * k + b, b * k: b * k + k] = P[a, b]
    pi = np.full(k * k, 1.0 / (k * k))
    for _ in range(5000):
        new = pi @ T
        if np.abs(new - pi).max() < 1e-15:
            break
        pi = new
    pi = pi / pi.sum()
    rows = P.reshape(k * k, k)
    h_rows = -(rows * np.log2(np.where(rows > 0, rows, 1.0))).sum(1)
    return float(pi @ h_rows), pi


def sample_chain(P, pi, num, length, seed):
    """`num` sequences of `length` symbols, each started from the stationary
    pair distribution (so every window is stationary)."""
    rng = np.random.default_rng(seed)
    k = P.shape[0]
    pairs = rng.choice(k * k, size=num, p=pi)
    out = np.zeros((num, length), np.int64)
    out[:, 0], out[:, 1] = pairs // k, pairs % k
    cdf = np.cumsum(P, axis=-1)
    for i in range(2, length):
        u = rng.uniform(size=(num, 1))
        c = cdf[out[:, i - 2], out[:, i - 1]]
        out[:, i] = np.minimum((u > c).sum(1), k - 1)
    return out


# ----------------------------------------------------------------------
# The autoregressive peer
# ----------------------------------------------------------------------
class CausalBlock(keras.layers.Layer):
    """Pre-LN Transformer block with causal self-attention."""

    def __init__(self, dim, heads, mlp_ratio=4.0, **kwargs):
        super().__init__(**kwargs)
        self.norm_1 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.attention = keras.layers.MultiHeadAttention(heads, dim // heads)
        self.norm_2 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.mlp_1 = keras.layers.Dense(int(dim * mlp_ratio))
        self.mlp_2 = keras.layers.Dense(dim)

    def call(self, x):
        h = self.norm_1(x)
        x = x + self.attention(h, h, use_causal_mask=True)
        return x + self.mlp_2(ops.gelu(self.mlp_1(self.norm_2(x)), approximate=True))


def ar_model(vocab, length, dim, layers, heads):
    """Logits of token l from tokens < l (input: BOS=0 then x[:-1])."""
    tokens = keras.Input((None,), dtype="int32")
    positions = keras.layers.Embedding(length, dim)(ops.arange(length))
    x = keras.layers.Embedding(vocab, dim)(tokens)
    x = x + positions[None, : ops.shape(tokens)[1]]
    for _ in range(layers):
        x = CausalBlock(dim, heads)(x)
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    return keras.Model(tokens, keras.layers.Dense(vocab)(x))


def shift(tokens):
    return np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)


def ar_bpc(model, tokens, batch=256):
    total, count = 0.0, 0
    for i in range(0, len(tokens), batch):
        x = tokens[i: i + batch]
        logits = model.predict_on_batch(shift(x))
        log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(
            -1, keepdims=True)) - logits.max(-1, keepdims=True)
        nll = -np.take_along_axis(log_p, x[..., None], -1)[..., 0]
        total += nll.sum()
        count += nll.size
    return total / count / math.log(2)


def ar_generate(model, batch, length, seed=0):
    """Token-by-token sampling (full recompute per token, no KV cache)."""

    @tf.function(autograph=False)
    def run(seed):
        tokens = tf.zeros((batch, length), tf.int32)

        def body(i, tokens):
            logits = model(shift_tf(tokens))[:, i]
            nxt = tf.random.stateless_categorical(logits, 1, tf.stack([seed, i]))[:, 0]
            return i + 1, tf.tensor_scatter_nd_update(
                tokens, tf.stack([tf.range(batch), tf.fill([batch], i)], 1),
                tf.cast(nxt, tf.int32))

        return tf.while_loop(lambda i, _: i < length, body, (0, tokens))[1]

    return run(tf.constant(seed))


def shift_tf(tokens):
    return tf.concat([tf.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)


# ----------------------------------------------------------------------
# Training for a fixed time
# ----------------------------------------------------------------------
class StopAfter(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start, self.steps = None, 0

    def on_train_batch_end(self, batch, logs=None):
        # The clock starts after the first step (its tracing and compiling).
        if self.start is None:
            self.start = time.time()
            return
        self.steps += 1
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True


def batches(tokens, batch, seed):
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.integers(0, len(tokens), batch)
        yield tokens[idx]


def train_mdlm(model, train, seconds, batch):
    stop = StopAfter(seconds)
    model.fit(batches(train, batch, 1), steps_per_epoch=10**6, epochs=1, verbose=0,
              callbacks=[stop])
    return stop.steps, time.time() - stop.start


class AverageWeights(keras.callbacks.Callback):
    """The AR peer's weight average, as MaskedDiffusionLM keeps its own
    (`WeightAverage`, the same decay and warm-up), updated after each step."""

    def __init__(self, decay):
        super().__init__()
        self.decay = decay
        self.average = None

    def on_train_batch_end(self, batch, logs=None):
        if self.average is None:
            self.average = WeightAverage(self.model.trainable_variables, self.decay)
        self.average.update()


def train_ar(vocab, train, seconds, batch, length, dim, layers, heads, lr, ema_decay=None):
    model = ar_model(vocab, length, dim, layers, heads)
    model.compile(keras.optimizers.AdamW(lr, weight_decay=0.01, clipnorm=1.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=JIT)

    def data():
        for x in batches(train, batch, 2):
            yield shift(x), x

    stop = StopAfter(seconds)
    callbacks = [stop]
    if ema_decay:
        model.weight_average = AverageWeights(ema_decay)
        callbacks.append(model.weight_average)
    model.fit(data(), steps_per_epoch=10**6, epochs=1, verbose=0, callbacks=callbacks,
              shuffle=False)
    return model, stop.steps, time.time() - stop.start


def mdlm_eval(model, tokens, samples):
    model.num_eval_samples = samples
    return model.evaluate(tokens, batch_size=256, return_dict=True, verbose=0)


def param_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# ----------------------------------------------------------------------
# The parts
# ----------------------------------------------------------------------
def run_markov(args, samples_out):
    P = markov_chain(seed=args.seed)
    h, pi = entropy_rate(P)
    pairs = pi.reshape(27, 27)
    h_pair = float(-(pi[pi > 0] * np.log2(pi[pi > 0])).sum())
    unigram = pairs.sum(0)
    # Reference points: what a model that learned only the symbol frequencies
    # (order 0) or only the previous symbol (order 1) would score.
    h_order0 = float(-(unigram * np.log2(unigram)).sum())
    h_order1 = float(-(pairs * np.log2(pairs / pairs.sum(1, keepdims=True))).sum())
    L = args.sequence_length
    window = (h_pair + (L - 2) * h) / L  # Exact entropy per character of a window.
    train = sample_chain(P, pi, args.train_sequences, L, seed=1) + 2  # ids 2.. (0 pad, 1 UNK)
    test = sample_chain(P, pi, args.test_sequences, L, seed=2) + 2
    del pairs
    diffusion = {}
    for process in args.processes.split(","):
        model = MaskedDiffusionLM(
            sequence_length=L, vocabulary=["", "[UNK]"] + SYMBOLS, hidden_dim=args.dim,
            num_layers=args.layers, num_heads=args.heads, seed=0, process=process)
        model.compile(keras.optimizers.AdamW(args.lr, weight_decay=0.01, clipnorm=1.0),
                      jit_compile=JIT)
        steps, secs = train_mdlm(model, train, args.seconds, args.batch)
        ev = mdlm_eval(model, test, args.eval_samples)
        text = model.generate(4, length=L, num_steps=L, seed=0)
        samples_out.setdefault("markov", "")
        samples_out["markov"] += "== markov: %s diffusion samples (27 symbols) ==\n%s\n" % (
            process, "\n".join(text))
        diffusion[PROCESS_KEYS[process]] = {
            "elbo_bpc": ev["bpc"], "bpc_stderr": ev["bpc_stderr"],
            "ratio_to_entropy_rate": ev["bpc"] / h, "ratio_to_window_entropy": ev["bpc"] / window,
            "train_steps": steps, "train_seconds": secs, "params": param_count(model)}
        print(process, diffusion[PROCESS_KEYS[process]], flush=True)
    ar, ar_steps, ar_secs = train_ar(29, train, args.seconds, args.batch, L, args.dim,
                                     args.layers, args.heads, args.lr)
    ar_value = ar_bpc(ar, test)
    best = min(v["elbo_bpc"] for v in diffusion.values())
    return {
        "entropy_rate_bits": h,
        "window_entropy_bits_per_char": window,
        "order0_entropy_bits": h_order0,
        "order1_conditional_entropy_bits": h_order1,
        "sequence_length": L,
        **diffusion,
        "ar": {"bpc": ar_value, "ratio_to_entropy_rate": ar_value / h,
               "train_steps": ar_steps, "train_seconds": ar_secs, "params": param_count(ar)},
        "goal": "MDLM ELBO within 5% of the entropy rate",
        "goal_met": bool(diffusion.get("mdlm", {"elbo_bpc": np.inf})["elbo_bpc"] <= 1.05 * h),
        "best_diffusion_ratio_to_entropy_rate": best / h,
    }


def run_pydoc(args, samples_out):
    import pydoc_data.topics

    corpus = "".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
    split = int(0.9 * len(corpus))
    L = args.sequence_length
    chunks = lambda s: [s[i: i + L] for i in range(0, len(s) - L + 1, L)]
    train_text, test_text = chunks(corpus[:split]), chunks(corpus[split:])
    model = MaskedDiffusionLM(sequence_length=L, hidden_dim=args.dim, num_layers=args.layers,
                              num_heads=args.heads, seed=0)
    model.adapt(tf.data.Dataset.from_tensor_slices(train_text).batch(1024))
    train = np.asarray(model.tokenize(train_text))
    test = np.asarray(model.tokenize(test_text))
    model.compile(keras.optimizers.AdamW(args.lr, weight_decay=0.01, clipnorm=1.0),
                  jit_compile=JIT)
    steps, secs = train_mdlm(model, train, args.seconds, args.batch)
    ev = mdlm_eval(model, test, args.eval_samples)
    with model.ema_weights():
        ev_avg = mdlm_eval(model, test, args.eval_samples)
    print("mdlm", ev, "average:", ev_avg, flush=True)
    vocab = model.mask_id + 1
    uniform = None
    if "uniform" in args.processes.split(","):
        other = MaskedDiffusionLM(sequence_length=L, vocabulary=model.vocabulary,
                                  hidden_dim=args.dim, num_layers=args.layers,
                                  num_heads=args.heads, seed=0, process="uniform")
        other.compile(keras.optimizers.AdamW(args.lr, weight_decay=0.01, clipnorm=1.0),
                      jit_compile=JIT)
        u_steps, u_secs = train_mdlm(other, train, args.seconds, args.batch)
        u_ev = mdlm_eval(other, test, args.eval_samples)
        other.generate(8, length=L, num_steps=L, seed=0)  # Warm-up (tracing).
        start = time.time()
        u_texts = other.generate(8, length=L, num_steps=L, seed=1)
        uniform = {"elbo_bpc": u_ev["bpc"], "bpc_stderr": u_ev["bpc_stderr"],
                   "train_steps": u_steps, "train_seconds": u_secs,
                   "params": param_count(other),
                   "generation_chars_per_s": 8 * L / (time.time() - start),
                   "network_calls": int(other.last_num_calls), "num_steps": L}
        print("uniform", uniform, flush=True)
    ar, ar_steps, ar_secs = train_ar(vocab, train, args.seconds, args.batch, L, args.dim,
                                     args.layers, args.heads, args.lr, model.ema_decay)
    ar_value = ar_bpc(ar, test)
    average = ar.weight_average.average
    with averages_assigned(ar.trainable_variables, average.by_variable()):
        ar_avg = ar_bpc(ar, test)
    print("ar", ar_value, "average:", ar_avg, flush=True)

    batch, steps_gen = 8, L
    model.generate(batch, length=L, num_steps=steps_gen, seed=0)  # Warm-up (tracing).
    start = time.time()
    texts = model.generate(batch, length=L, num_steps=steps_gen, seed=1)
    mdlm_cps = batch * L / (time.time() - start)
    calls = model.last_num_calls
    ar_generate(ar, batch, L, 0)
    start = time.time()
    ar_tokens = ar_generate(ar, batch, L, 1).numpy()
    ar_cps = batch * L / (time.time() - start)
    long_text = model.generate(1, length=3 * L, num_steps=L, seed=2, temperature=0.9)
    infill_src = test_text[0][: L // 4] + "_" * (L // 2) + test_text[0][3 * L // 4:]
    filled = model.infill([infill_src], seed=0)
    samples_out["pydoc"] = (
        "== pydoc: MDLM samples (length %d, %d steps) ==\n" % (L, steps_gen)
        + "\n---\n".join(texts)
        + "\n== pydoc: AR samples ==\n" + "\n---\n".join(model.detokenize(ar_tokens))
        + "\n== pydoc: MDLM, semi-autoregressive, %d characters, temperature 0.9 ==\n" % (3 * L)
        + long_text[0]
        + "\n== pydoc: MDLM infilling (given / filled) ==\n" + infill_src + "\n" + filled[0]
    )
    if uniform is not None:
        samples_out["pydoc"] += ("\n== pydoc: uniform diffusion samples (length %d, %d steps) "
                                 "==\n" % (L, L) + "\n---\n".join(u_texts))
    return {
        "corpus_characters": len(corpus), "train_chunks": len(train_text),
        "test_chunks": len(test_text), "vocabulary_size": model.vocabulary_size,
        "sequence_length": L,
        "mdlm": {"elbo_bpc": ev["bpc"], "bpc_stderr": ev["bpc_stderr"],
                 "average_elbo_bpc": ev_avg["bpc"], "average_bpc_stderr": ev_avg["bpc_stderr"],
                 "train_steps": steps, "train_seconds": secs, "params": param_count(model),
                 "generation_chars_per_s": mdlm_cps, "network_calls": int(calls),
                 "num_steps": steps_gen},
        "ar": {"bpc": ar_value, "average_bpc": ar_avg, "train_steps": ar_steps,
               "train_seconds": ar_secs, "params": param_count(ar),
               "generation_chars_per_s": ar_cps},
        "ema_decay": model.ema_decay,
        "ratio_mdlm_to_ar_bpc_average_weights": ev_avg["bpc"] / ar_avg,
        **({"uniform": uniform, "ratio_uniform_to_ar_bpc": uniform["elbo_bpc"] / ar_value}
           if uniform is not None else {}),
        "ratio_mdlm_to_ar_bpc": ev["bpc"] / ar_value,
        "goal": "MDLM ELBO bpc <= 1.15x the AR bpc",
        "goal_met": bool(min(ev["bpc"] / ar_value, ev_avg["bpc"] / ar_avg) <= 1.15),
    }


def write(results, samples, args):
    """Writes the parts run now over those of an earlier run (one part per
    run keeps each run short)."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "text_diffusion")
    merged, old_samples = {}, {}
    if os.path.exists(path + ".json"):
        with open(path + ".json") as f:
            merged = json.load(f)
    if os.path.exists(path + "_samples.json"):
        with open(path + "_samples.json") as f:
            old_samples = json.load(f)
    for part in ("markov", "pydoc"):
        if part in results:
            merged[part] = results[part]
            merged[part]["run"] = {k: results[k] for k in ("command", "machine", "versions",
                                                           "notes")}
            merged[part]["run"]["config"] = vars(args)
            old_samples[part] = samples[part]
    results = merged
    with open(path + ".json", "w") as f:
        json.dump(results, f, indent=2, default=float)
    with open(path + "_samples.json", "w") as f:
        json.dump(old_samples, f, indent=1)
    with open(path + "_samples.txt", "w") as f:
        f.write("\n\n".join(old_samples[k] for k in ("markov", "pydoc") if k in old_samples)
                + "\n")
    lines = ["# Masked diffusion (MDLM) on text", ""]
    for part in ("markov", "pydoc"):
        if part in results:
            run, c = results[part]["run"], results[part]["run"]["config"]
            xla = "XLA" if c.get("jit", 1) else "no XLA"
            lines += [f"Part `{part}`: `{run['command']}`", "",
                      f"Machine: {run['machine']}; {run['versions']}. All models: width "
                      f"{c['dim']}, {c['layers']} layers, {c['heads']} heads, batch "
                      f"{c['batch']}, AdamW lr {c['lr']:g}, {xla}, the same wall-clock "
                      f"training time ({c['seconds']:g} s each, after the first step).", ""]
    if "markov" in results:
        m = results["markov"]
        lines += ["## (a) Order-2 Markov chain, 27 symbols", "",
                  "| | bits/char | / entropy rate |", "|---|---|---|",
                  "| entropy rate (exact) | %.4f | 1.000 |" % m["entropy_rate_bits"],
                  "| exact entropy of a %d-char window, per char | %.4f | %.3f |" % (
                      m["sequence_length"], m["window_entropy_bits_per_char"],
                      m["window_entropy_bits_per_char"] / m["entropy_rate_bits"]),
                  "| symbol frequencies only (order-0 entropy) | %.4f | %.3f |" % (
                      m["order0_entropy_bits"], m["order0_entropy_bits"] / m["entropy_rate_bits"]),
                  "| previous symbol only (order-1 entropy) | %.4f | %.3f |" % (
                      m["order1_conditional_entropy_bits"],
                      m["order1_conditional_entropy_bits"] / m["entropy_rate_bits"]),
                  "| MDLM ELBO (± MC stderr) | %.4f ± %.4f | %.3f |" % (
                      m["mdlm"]["elbo_bpc"], m["mdlm"]["bpc_stderr"],
                      m["mdlm"]["ratio_to_entropy_rate"]),
                  *(["| uniform diffusion ELBO (± MC stderr) | %.4f ± %.4f | %.3f |" % (
                      m["uniform"]["elbo_bpc"], m["uniform"]["bpc_stderr"],
                      m["uniform"]["ratio_to_entropy_rate"])] if "uniform" in m else []),
                  "| AR peer (exact NLL) | %.4f | %.3f |" % (
                      m["ar"]["bpc"], m["ar"]["ratio_to_entropy_rate"]), "",
                  "Train steps: MDLM %d, %sAR %d. Goal (MDLM within 5%% of the entropy rate): "
                  "%s." % (m["mdlm"]["train_steps"],
                           "uniform %d, " % m["uniform"]["train_steps"] if "uniform" in m else "",
                           m["ar"]["train_steps"], "met" if m["goal_met"] else "NOT met"), ""]
    if "pydoc" in results:
        p = results["pydoc"]
        lines += ["## (b) pydoc_data.topics (%d characters, 90/10 split)" % p["corpus_characters"],
                  "", "| | held-out bits/char | generation chars/s | train steps |",
                  "|---|---|---|---|",
                  "| MDLM ELBO (± MC stderr) | %.4f ± %.4f | %.0f (%d steps, %d network calls) "
                  "| %d |" % (p["mdlm"]["elbo_bpc"], p["mdlm"]["bpc_stderr"],
                              p["mdlm"]["generation_chars_per_s"], p["mdlm"]["num_steps"],
                              p["mdlm"]["network_calls"], p["mdlm"]["train_steps"]),
                  *(["| uniform diffusion ELBO (± MC stderr) | %.4f ± %.4f | %.0f (%d steps) "
                     "| %d |" % (p["uniform"]["elbo_bpc"], p["uniform"]["bpc_stderr"],
                                 p["uniform"]["generation_chars_per_s"],
                                 p["uniform"]["num_steps"], p["uniform"]["train_steps"])]
                    if "uniform" in p else []),
                  "| AR peer | %.4f | %.0f (no KV cache) | %d |" % (
                      p["ar"]["bpc"], p["ar"]["generation_chars_per_s"], p["ar"]["train_steps"]),
                  *(["| MDLM ELBO, weight average (decay %g) | %.4f ± %.4f | | |" % (
                      p["ema_decay"], p["mdlm"]["average_elbo_bpc"],
                      p["mdlm"]["average_bpc_stderr"]),
                     "| AR peer, weight average (the same) | %.4f | | |" % (
                      p["ar"]["average_bpc"])] if "average_elbo_bpc" in p["mdlm"] else []),
                  "", "MDLM / AR bpc: %.3f%s%s. Goal (MDLM <= 1.15): %s." % (
                      p["ratio_mdlm_to_ar_bpc"],
                      "; with both weight averages: %.3f" % p[
                          "ratio_mdlm_to_ar_bpc_average_weights"]
                      if "ratio_mdlm_to_ar_bpc_average_weights" in p else "",
                      "; uniform / AR: %.3f" % p["ratio_uniform_to_ar_bpc"]
                      if "uniform" in p else "",
                      "met" if p["goal_met"] else "NOT met"), "",
                  "Samples: `text_diffusion_samples.txt`.", ""]
    notes = [results[p]["run"].get("notes", "") for p in ("markov", "pydoc") if p in results]
    lines += ["## Notes", ""]
    for note in notes:
        lines += [note, ""] if note else []
    with open(path + ".md", "w") as f:
        f.write("\n".join(lines))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", default="all", choices=["markov", "pydoc", "all"])
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--sequence_length", type=int, default=64)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train_sequences", type=int, default=20000)
    parser.add_argument("--test_sequences", type=int, default=1000)
    parser.add_argument("--eval_samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", default="masked,uniform")
    parser.add_argument("--notes", default="")
    parser.add_argument("--jit", type=int, default=1,
                        help="XLA for the train steps (0: plain graphs, no compile wait)")
    args = parser.parse_args()
    global JIT
    JIT = bool(args.jit)
    keras.utils.set_random_seed(args.seed)
    results = {
        "command": "python benchmarks/text_diffusion.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k != "notes"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
                   "(shared with other jobs)",
        "versions": f"keras {keras.__version__}, tensorflow {tf.__version__}, "
                    f"keras_diffusion {keras_diffusion.__version__}",
        "notes": args.notes,
    }
    samples = {}
    if args.part in ("markov", "all"):
        results["markov"] = run_markov(args, samples)
        print(json.dumps(results["markov"], indent=1, default=float))
    if args.part in ("pydoc", "all"):
        results["pydoc"] = run_pydoc(args, samples)
        print(json.dumps(results["pydoc"], indent=1, default=float))
    write(results, samples, args)


if __name__ == "__main__":
    main()
