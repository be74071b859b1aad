"""Config checks: unknown keys, the workdir's config, batch vs replicas."""

import json
import os

import ml_collections

from training.configs.base import get_base_config

CONFIG_FILE = "config.json"
# Keys a resumed run may change without --allow_config_change (a trailing
# "." means every key under it). The README's "Set-up" section lists them.
CHANGEABLE = ("train.num_steps", "train.log_every", "train.sample_every",
              "train.num_sample_images", "train.keep_checkpoints", "sample.", "eval.",
              "export.", "distribution.")


def is_changeable(key):
    """Whether a resumed run may change config key `key` (e.g. "train.num_steps")."""
    return any(key == c or (c.endswith(".") and key.startswith(c)) for c in CHANGEABLE)


class ConfigError(ValueError):
    """A config that cannot be run: reported before any compute is spent."""


def _is_free_form(path):
    return path.split(".")[-1].endswith("kwargs")


def validate(config, base=None, prefix=""):
    """Raises `ConfigError` naming each key of `config` missing from the base schema."""
    base = get_base_config() if base is None else base
    unknown = []

    def walk(cfg, ref, prefix):
        for key in cfg.keys():
            path = prefix + key
            if key not in ref:
                unknown.append(path)
                continue
            value, ref_value = cfg[key], ref[key]
            if _is_free_form(path):
                continue
            if isinstance(ref_value, ml_collections.ConfigDict):
                if not isinstance(value, (ml_collections.ConfigDict, dict)):
                    raise ConfigError(f"Config key {path!r} must be a dict, got {value!r}")
                walk(value, ref_value, path + ".")

    walk(config, base, prefix)
    if unknown:
        raise ConfigError(
            f"Unknown config keys: {unknown}. Valid keys are those of "
            "training/configs/base.py (typo?)."
        )
    _check_values(config)
    return config


def _check_values(config):
    t = config.train
    if t.num_steps <= 0:
        raise ConfigError(f"train.num_steps must be positive, got {t.num_steps}")
    if t.checkpoint_every <= 0 or t.num_steps % t.checkpoint_every:
        raise ConfigError(
            f"train.num_steps={t.num_steps} must be a positive multiple of "
            f"train.checkpoint_every={t.checkpoint_every}"
        )
    if config.data.batch_size <= 0:
        raise ConfigError(f"data.batch_size must be positive, got {config.data.batch_size}")
    names = ("mnist", "toy2d", "image_folder", "tfrecord", "tfds")
    if config.data.name not in names:
        raise ConfigError(f"Unknown data.name={config.data.name!r}. Valid names: {list(names)}")
    if config.data.name in ("image_folder", "tfrecord") and not config.data.path:
        raise ConfigError(
            f"data.name={config.data.name!r} needs data.path (--config.data.path=...)"
        )
    if config.data.name == "tfds" and not config.data.tfds_name:
        raise ConfigError("data.name='tfds' needs data.tfds_name")
    if config.model.denoiser == "unet" and config.data.image_size and not config.model.preset:
        mults = config.model.denoiser_kwargs.get("channel_multipliers", (1, 2, 2, 2))
        factor = 2 ** (len(mults) - 1)
        if config.data.image_size % factor:
            raise ConfigError(
                f"data.image_size={config.data.image_size} must be divisible by "
                f"2**(len(channel_multipliers) - 1) = {factor} for the UNet"
            )


def to_dict(config):
    return json.loads(config.to_json_best_effort(sort_keys=True))


def _diff(a, b, prefix=""):
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        path = prefix + k
        if isinstance(a.get(k), dict) and isinstance(b.get(k), dict) and not _is_free_form(path):
            out += _diff(a[k], b[k], path + ".")
        elif a.get(k) != b.get(k):
            out.append(path)
    return out


def apply_overrides(config, overrides):
    """`config` with `overrides` ({"train.num_steps": 3000, ...}) set.

    A key that is not in the config is a `ConfigError` naming it.
    """
    config = _from_dict(to_dict(config))
    for key, value in overrides.items():
        node, parts = config, key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, (ml_collections.ConfigDict, dict)) or (
                part not in node and not _is_free_form(".".join(parts[:i]))
            ):
                raise ConfigError(
                    f"Unknown config key {key!r} in --config.{key}={value!r}. Valid keys "
                    "are those of training/configs/base.py (typo?)."
                )
            if i == len(parts) - 1:
                node[part] = value
            else:
                node = node[part]
    return config


def resolve(config, workdir, allow_change=False, overrides=None):
    """The config to run: `config` checked against the workdir's, or the workdir's.

    Args:
        config: the `--config` file's config (its overrides applied), or
            None to read the workdir's `config.json`.
        workdir: the run's directory.
        allow_change: whether `config` may differ from the workdir's in keys
            that are not `CHANGEABLE` (`--allow_config_change`).
        overrides: with `config=None`, the `--config.KEY=VALUE` values
            ({"train.num_steps": 3000}) to set on the workdir's config. Each
            must be `CHANGEABLE` unless `allow_change`; otherwise a
            `ConfigError` names the key.

    Returns `(config, saved)`: `saved` is whether the workdir already has it.
    """
    path = os.path.join(workdir, CONFIG_FILE)
    saved = None
    if os.path.exists(path):
        with open(path) as f:
            saved = _with_defaults(json.load(f))
    if config is None:
        if saved is None:
            raise ConfigError(
                f"No --config given and workdir={workdir!r} holds no {CONFIG_FILE}: "
                "pass --config=training/configs/<name>.py"
            )
        config = _from_dict(saved)
        if overrides:
            fixed = [k for k in overrides if not is_changeable(k)]
            if fixed and not allow_change:
                raise ConfigError(
                    f"--config.{fixed[0]} cannot change when resuming workdir={workdir!r}: "
                    f"{fixed} would change the model, the data or the optimization that "
                    "its checkpoints belong to. Keys that may change: "
                    f"{[c + '*' if c.endswith('.') else c for c in CHANGEABLE]}. Start a "
                    "new --workdir, or pass --allow_config_change."
                )
            config = apply_overrides(config, overrides)
    validate(config)
    if saved is not None:
        changed = [k for k in _diff(saved, to_dict(config)) if not is_changeable(k)]
        if changed and not allow_change:
            raise ConfigError(
                f"workdir={workdir!r} holds a run with a different config (changed keys: "
                f"{changed}). Use another --workdir, or pass --allow_config_change to "
                "continue this run with the new config."
            )
    return config, saved is not None


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def _with_defaults(saved, base=None, prefix=""):
    """`saved` with the keys added to the base schema since it was written."""
    base = to_dict(get_base_config()) if base is None else base
    out = dict(saved)
    for k, v in base.items():
        path = prefix + k
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict) and not _is_free_form(path):
            out[k] = _with_defaults(out[k], v, path + ".")
    return out


def _from_dict(d):
    return ml_collections.ConfigDict(d)


def write(config, workdir):
    """Writes the resolved config into the workdir (atomically)."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)


def check_batch_size(batch_size, num_replicas):
    if batch_size % num_replicas:
        raise ConfigError(
            f"data.batch_size={batch_size} is not divisible by the number of replicas "
            f"({num_replicas}): choose a multiple of {num_replicas}"
        )
