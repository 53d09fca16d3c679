"""What is deterministic, on one machine (same TensorFlow build, same CPU thread counts):

* the phantom: the same seed and config give byte-identical files (NIfTI and dataset.json);
* conversion: the same input folder and ConvertConfig give byte-identical shards and the same
  dataset.json apart from its "created" timestamp;
* training: the same flags with --tf_seed and --sampling_seed give identical losses and
  identical weights (checkpoint variables) step for step. No op-determinism switch is needed
  on CPU; GPUs and other machines may differ in the last bits.
"""
import dataclasses
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfdpgan import workdir
from tfdpgan.data import convert, phantom, volumes
from tfdpgan.gan import run, training
from tiny import TINY

PHANTOM = dataclasses.replace(phantom.with_shape(phantom.PRESETS["default"], (32, 40, 16)),
                              max_branches=20, max_veins=5)


def _files(root):
    """{relative path: bytes} of every file under ``root``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def test_same_seed_gives_a_byte_identical_phantom(tmp_path):
    a, b, c = (str(tmp_path / name) for name in "abc")
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        phantom.write_dataset(out, 2, num_test=1, seed=seed, config=PHANTOM, workers=1)
    files_a, files_b = _files(a), _files(b)
    assert len(files_a) >= 10 and files_a == files_b
    files_c = _files(c)
    assert files_c.keys() == files_a.keys()
    assert any(files_c[k] != files_a[k] for k in files_a if k.endswith(".nii.gz"))


def test_converting_twice_gives_byte_identical_shards(tiny_dataset, tmp_path):
    nifti = tiny_dataset[0]
    config = convert.ConvertConfig(patch_size=16, patches_per_patient=40, val_fraction=0.25,
                                   num_shards=2, seed=0)
    outs = [str(tmp_path / f"rec{i}") for i in range(2)]
    for out in outs:
        convert.convert(volumes.find_cases(nifti, "Tr"), out, config,
                        test_cases=volumes.find_cases(nifti, "Ts"), progress=lambda *a: None)
    files = [_files(out) for out in outs]
    assert files[0].keys() == files[1].keys()
    shards = [k for k in files[0] if k.endswith(".tfrecord.gz")]
    assert len(shards) >= 4
    for name in shards:
        assert files[0][name] == files[1][name], name
    infos = [json.loads(f["dataset.json"].decode().replace(out, "OUT"))
             for f, out in zip(files, outs)]
    assert infos[0].pop("created") != infos[1].pop("created")   # the one timestamp
    assert infos[0] == infos[1]


def _scalars(run_dir):
    """{(tag, step): value} of the train/ and privacy/ scalars in the run's event files
    (release/ and, with log_private_stats, private/)."""
    values = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"),
                                 recursive=True)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag.startswith(("train/", "privacy/")):
                    values[(v.tag, event.step)] = tf.make_ndarray(v.tensor).item()
    return values


def _variables(run_dir):
    latest = tf.train.latest_checkpoint(workdir.path(run_dir, workdir.CHECKPOINTS))
    reader = tf.train.load_checkpoint(latest)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(latest)
            if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.mark.slow
def test_same_seeds_give_identical_losses_and_weights(patch_records, tmp_path):
    configs = [run.TrainConfig(workdir=str(tmp_path / name), data=patch_records, epsilon=3.0,
                               sampling_seed=5, log_private_stats=True,
                               **dict(TINY, critic_steps=10, summary_every=2, tf_seed=7))
               for name in ("a", "b")]
    for config in configs:
        training.train(config)
    scalars = [_scalars(c.workdir) for c in configs]
    assert {tag for tag, _ in scalars[0]} >= {"train/generator_loss", "train/critic_loss",
                                              "train/update_norm", "privacy/epsilon"}
    assert len(scalars[0]) >= 20 and scalars[0] == scalars[1]
    weights = [_variables(c.workdir) for c in configs]
    assert weights[0].keys() == weights[1].keys()
    assert any("generator" in k for k in weights[0]) and any("critic" in k for k in weights[0])
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
    # and the seed matters: another --tf_seed trains other weights
    other = dataclasses.replace(configs[0], workdir=str(tmp_path / "c"), tf_seed=8)
    training.train(other)
    differ = _variables(other.workdir)
    assert any(not np.array_equal(differ[k], weights[0][k]) for k in weights[0]
               if "generator" in k)
