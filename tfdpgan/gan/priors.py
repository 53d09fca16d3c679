"""Public priors: the weights a private run starts from (``--init_from``).

A prior is either

* a training workdir whose data are PUBLIC (e.g. ``flags/pretrain_phantom.cfg``), or
* ``BUILTIN`` ("builtin"): the prior shipped in ``tfdpgan/gan/builtin_prior/``, made by
  ``python tools/export_prior.py`` from a ``flags/pretrain_phantom.cfg`` run: non-private
  training on the built-in phantom only (site_b preset; ``prior.json`` records the command,
  the phantom's preset and seed, and the SHA-256 of every volume it trained on).

Privacy assumption: a prior's weights are constants that depend on public data only. Then
starting from them (and keeping some of them frozen) costs no privacy and the run's (ε, δ)
covers what the private data added. :func:`describe` enforces the one thing code can check:
a prior that trained on any of the private run's source volumes (same SHA-256) is refused. The
card states the prior (tfdpgan.dp.card), and the evaluation scores the prior alone as a row of
its own, so DP fine-tuning is not credited with what the prior already knew.
"""
import glob
import hashlib
import os
from typing import Dict, List

import numpy as np
import tensorflow as tf

from tfdpgan import atomic, errors, paths, workdir
from tfdpgan.data import records
from tfdpgan.gan import export, models, run as run_lib, wgan

__all__ = ["BUILTIN", "DEFAULT_FROZEN_STAGES", "BUILTIN_DIR", "PRIOR_JSON", "WEIGHTS_NPZ",
           "is_builtin", "read_builtin", "fingerprint", "networks", "check_fits", "describe",
           "load_into", "sampler", "export_prior"]

BUILTIN = "builtin"
# Critic stages a run started from a prior keeps frozen unless told otherwise (issue #11, ε = 1,
# site_b prior -> default site): at the prior ~94 % of a record's gradient norm sits in stages
# 1-2, so with them trained the rest got ~6 % of the clip budget; frozen stages 0/1/2/3 gave
# synthetic U-Net DSC 0.500/0.575/0.579/0.541.
DEFAULT_FROZEN_STAGES = 2
BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin_prior")
PRIOR_JSON = "prior.json"
WEIGHTS_NPZ = "weights.npz"
# the networks a prior holds, by their WGAN attribute (the released one is the EMA, if any)
_NETWORKS = ("generator", "critic", "release_generator")


def is_builtin(source: str) -> bool:
    return source == BUILTIN


def _source_checksums(info: dict) -> set:
    """SHA-256s of the source images and labels (masks are often shared templates)."""
    return {h for p in info.get("patients", {}).values()
            for role, h in (p.get("sha256") or {}).items() if role in ("image", "label")}


def read_builtin(folder: str = None) -> dict:
    """The built-in prior's prior.json, checked against the weights it describes."""
    folder = folder or BUILTIN_DIR
    meta = workdir.read_json(os.path.join(folder, PRIOR_JSON), "the built-in prior")
    weights = os.path.join(folder, WEIGHTS_NPZ)
    if not os.path.isfile(weights) or _sha256(weights) != meta.get("weights_sha256"):
        raise errors.SettingsError(f"{weights}: missing, or not the file {PRIOR_JSON} describes "
                                   f"(reinstall tfdpgan, or rebuild it: tools/export_prior.py)")
    return meta


def fingerprint(source: str) -> str:
    """SHA-256 identity of the weights ``source`` gives: the built-in prior's weights.npz, or the
    files of a workdir prior's latest checkpoint (what load_into restores). Recorded in the
    card and run.json, so a run is not resumed, nor a benchmark row reused, from another prior
    under the same name."""
    if is_builtin(source):
        return read_builtin()["weights_sha256"]
    latest = tf.train.latest_checkpoint(workdir.path(source, workdir.CHECKPOINTS))
    if latest is None:
        raise errors.WorkdirError(f"--init_from={source}: no checkpoint (has the run started?)")
    digest = hashlib.sha256()
    for path in sorted(glob.glob(latest + ".*")):
        digest.update(os.path.basename(path).encode() + b"\0" + _sha256(path).encode())
    return digest.hexdigest()


def _networks_text(shapes: dict) -> str:
    return (f"{shapes['patch_size']}x{shapes['patch_size']} patches, --base_filters="
            f"{shapes['base_filters']}, --generator_filters={shapes['generator_filters']}, "
            f"--latent_dim={shapes['latent_dim']}, --critic_norm="
            f"{shapes['critic_norm']}, --generator_upsample={shapes['generator_upsample']}, "
            f"--generator_output={shapes['generator_output']}")


def describe(source: str, rec_dir: str) -> dict:
    """What the card says about the prior ``source`` of a run on ``rec_dir``: its name, the name
    of its data, whether it was private, its critic steps, its :func:`fingerprint`. Folder
    NAMES only: the card is released, and absolute paths tell about the institution.

    Refuses a prior trained on any of this run's source volumes (same SHA-256): such a "prior"
    would have seen the private data outside the DP mechanism."""
    private_sha = _source_checksums(records.read_dataset_json(rec_dir))
    if is_builtin(source):
        meta = read_builtin()
        shared = set(meta["source_sha256"]) & private_sha
        data_name, same_folder = meta["data"], False
        prior = {"workdir": BUILTIN, "data": meta["data"], "prior_private": meta["private"],
                 "prior_epsilon": meta["epsilon"], "prior_critic_steps": meta["critic_steps"],
                 "prior_sha256": meta["weights_sha256"]}   # fingerprint(), read once
    else:
        prior_run = workdir.read_run(source)
        data_name = prior_run["data"]
        shared = _source_checksums(records.read_dataset_json(data_name)) & private_sha
        same_folder = os.path.abspath(data_name) == os.path.abspath(rec_dir)
        prior_card = workdir.read_card(source)
        prior = {"workdir": os.path.basename(os.path.abspath(source)),
                 "data": os.path.basename(os.path.normpath(data_name)),
                 "prior_private": prior_card["private"], "prior_epsilon": prior_card["epsilon"],
                 "prior_critic_steps": prior_card["critic_steps"],
                 "prior_sha256": fingerprint(source)}
    if same_folder or shared:
        raise errors.SettingsError(
            f"--init_from={source} was trained on {data_name}, which shares "
            f"{len(shared) or 'all'} source files with this run's private data; a prior must "
            f"come from public data (e.g. the built-in phantom)")
    return prior


def networks(config: run_lib.TrainConfig, patch_size: int) -> dict:
    """The settings that decide a run's network shapes."""
    return {"patch_size": int(patch_size), "base_filters": config.base_filters,
            "generator_filters": run_lib.generator_width(config),
            "latent_dim": config.gan.latent_dim, "critic_norm": config.critic_norm,
            "generator_upsample": config.generator_upsample,
            "generator_output": config.generator_output}


def _with_network_defaults(shapes: dict) -> dict:
    # priors exported before --generator_filters (--generator_output) existed have one width
    # for both networks (a tanh output)
    return {"generator_filters": shapes["base_filters"], "generator_output": "tanh", **shapes}


def _prior_networks(source: str) -> dict:
    if is_builtin(source):
        return _with_network_defaults(read_builtin()["networks"])
    prior_run = workdir.read_run(source)
    return networks(run_lib.config_from_run(prior_run),
                    records.read_dataset_json(prior_run["data"])["patch_size"])


def check_fits(source: str, wanted: dict):
    """Refuse (SettingsError) a prior whose networks differ from ``wanted`` (:func:`networks`
    of the run): before anything is built or written."""
    have = _prior_networks(source)
    if have != wanted:
        what = "the built-in prior" if is_builtin(source) else f"--init_from={source}"
        raise errors.SettingsError(
            f"{what} has {_networks_text(have)}, this run {_networks_text(wanted)}; pass "
            f"--init_from= to train from scratch, or pretrain a prior with this run's networks "
            f"(flags/pretrain_phantom.cfg) and pass its workdir")


def _layer_weights(model) -> List[List[np.ndarray]]:
    return [layer.get_weights() for layer in model.layers]


def _builtin_weights() -> Dict[str, List[List[np.ndarray]]]:
    meta = read_builtin()
    with np.load(os.path.join(BUILTIN_DIR, WEIGHTS_NPZ)) as npz:   # (read_builtin checked it)
        return {name: [[npz[f"{name}.{i:03d}.{j}"] for j in range(count)]
                       for i, count in enumerate(meta["layers"][name])] for name in _NETWORKS}


def _prior_weights(source: str) -> Dict[str, List[List[np.ndarray]]]:
    """Network name -> per-layer weights of a prior."""
    if is_builtin(source):
        return _builtin_weights()
    _, prior, _ = run_lib.restore(source)
    return {name: _layer_weights(getattr(prior, name)) for name in _NETWORKS}


def load_into(gan: wgan.WGAN, source: str):
    """Copy the prior's generator, critic and released (EMA) generator weights (not the
    optimizers, not the seed) into ``gan``. Architectures must match."""
    weights = _prior_weights(source)
    pairs = [("generator", gan.generator), ("critic", gan.critic)]
    if gan.ema_generator is not None:
        pairs.append(("release_generator", gan.ema_generator))
    for name, model in pairs:
        # layer by layer: a model's weight list puts frozen layers (--critic_frozen_stages)
        # last, so the two models' lists need not be in the same order
        mine = [[tuple(w.shape) for w in layer.weights] for layer in model.layers]
        theirs = [[tuple(w.shape) for w in layer] for layer in weights[name]]
        if mine != theirs:
            raise errors.SettingsError(f"--init_from={source}: its {name} does not fit this "
                                       f"run's networks (patch size, --base_filters, --generator_filters, --latent_dim, "
                                       f"--critic_norm, --generator_upsample or --generator_output differ)")
        for layer, values in zip(model.layers, weights[name]):
            layer.set_weights(values)


def sampler(source: str):
    """(serving function, latent_dim, patch_size) of the prior's released generator, like
    export.load_generator: a workdir's exported SavedModel, or the built-in weights."""
    if not is_builtin(source):
        return export.load_generator(workdir.path(source, workdir.GENERATOR))
    shapes = _with_network_defaults(read_builtin()["networks"])
    generator = models.build_generator(shapes["latent_dim"], shapes["patch_size"],
                                       shapes["generator_filters"],
                                       upsample=shapes["generator_upsample"],
                                       output=shapes["generator_output"])
    for layer, values in zip(generator.layers, _builtin_weights()["release_generator"]):
        layer.set_weights(values)
    return (export.serving_function(generator, shapes["latent_dim"]), shapes["latent_dim"],
            shapes["patch_size"])


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _public_stage(run_dir: str):
    """(config, run.json object, dataset.json, stage) of a non-private run on the built-in
    phantom; SettingsError for any other run (only the phantom is known to be public).
    ``stage``: the run's own data, critic steps and source SHA-256s, what :func:`_lineage`
    extends."""
    run = workdir.read_run(run_dir)
    config = run_lib.config_from_run(run)
    info = records.read_dataset_json(run["data"])
    # the records folder of default_data.prepare(config.phantom), in whichever cache root
    on_phantom = (os.path.basename(os.path.dirname(os.path.normpath(run["data"])))
                  == os.path.basename(paths.phantom_cache_dir(config.phantom.key())))
    card = workdir.read_card(run_dir)
    if card["private"] or not on_phantom:
        raise errors.SettingsError(f"{run_dir}: a built-in prior must be non-private training "
                                   f"on the built-in phantom (this run: private="
                                   f"{card['private']}, data {run['data']})")
    phantom = config.phantom
    return config, run, info, {
        "data": (f"built-in phantom, preset {phantom.preset}, seed {phantom.seed}, "
                 f"{phantom.num_patients} patients"),
        "critic_steps": card["critic_steps"], "source_sha256": sorted(_source_checksums(info))}


def _lineage(own: dict, run: dict) -> dict:
    """``own`` (data, critic_steps, source_sha256 of one public run) extended by the prior that
    run continued (its --init_from), recursively: a prior trained in stages is described by
    all of them, so the refusal of shared source volumes covers every stage's data."""
    source = run.get("init_from")
    if not source:
        return own
    if is_builtin(source):
        meta = read_builtin()
        earlier = {k: meta[k] for k in ("data", "critic_steps", "source_sha256", "command",
                                        "weights_sha256", "continued_from") if k in meta}
    else:
        _, prior_run, _, stage = _public_stage(source)
        earlier = _lineage(dict(stage, weights_sha256=fingerprint(source)), prior_run)
    if run.get("prior_sha256") not in (None, earlier["weights_sha256"]):
        raise errors.SettingsError(f"--init_from={source} has changed since this run started "
                                   f"from it: its first stage can no longer be described")
    return dict(own, data=f"{earlier['data']}; then {own['data']}",
                critic_steps=earlier["critic_steps"] + own["critic_steps"],
                source_sha256=sorted(set(earlier["source_sha256"]) | set(own["source_sha256"])),
                continued_from=earlier)


def export_prior(run_dir: str, out_dir: str = None, command: str = "") -> dict:
    """Write the non-private run in ``run_dir`` (latest checkpoint) as a built-in prior:
    ``weights.npz`` (per-layer weights of the three networks) and ``prior.json`` (how it was
    made, its networks, and the SHA-256 of every source volume it trained on, including those
    of the prior it continued, if any: ``continued_from``; ``critic_steps`` and ``data`` then
    cover every stage). Refuses a private run (a prior must be public-data training; a DP run
    is not that) and a run whose data, or whose prior's, are not the phantom (only the phantom
    is known to be public)."""
    config, run, info, stage = _public_stage(run_dir)
    _, gan, _ = run_lib.restore(run_dir)
    lineage = _lineage(stage, run)
    weights = {name: _layer_weights(getattr(gan, name)) for name in _NETWORKS}
    with atomic.staged_dir(out_dir or BUILTIN_DIR, overwrite=True) as staging:
        arrays = {f"{name}.{i:03d}.{j}": w for name, layers in weights.items()
                  for i, layer in enumerate(layers) for j, w in enumerate(layer)}
        np.savez_compressed(os.path.join(staging, WEIGHTS_NPZ), **arrays)
        meta = {
            "data": lineage["data"], "private": False, "epsilon": None,
            "critic_steps": lineage["critic_steps"], "command": command,
            # the run's settings, without its absolute paths
            "source_run": {k: v for k, v in run.items()
                           if k not in ("data", "workdir", "cache_dir")},
            "networks": networks(config, info["patch_size"]),
            "layers": {name: [len(layer) for layer in layers]
                       for name, layers in weights.items()},
            "source_sha256": lineage["source_sha256"],
            "weights_sha256": _sha256(os.path.join(staging, WEIGHTS_NPZ)),
        }
        if "continued_from" in lineage:
            meta["continued_from"] = lineage["continued_from"]
        atomic.write_json_atomic(os.path.join(staging, PRIOR_JSON), meta)
    return meta
