"""Release versus private (issue 13, item 2): a finished tiny run's ``release/`` (and its
``--release`` copy) holds only what the DP guarantee covers; ``private/`` holds the rest,
owner-only; old flat workdirs are still read; ``--release`` refuses what it must not copy."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfdpgan import errors, workdir
from tfdpgan.data import records
from tfdpgan.evaluation import config as eval_config, inputs
from tfdpgan.gan import export, run, sample, training
from tiny import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = (".json", ".md", ".txt")
# what TensorBoard may show without --log_private_stats (gan.training's classification)
RELEASE_TAGS = {f"train/{n}" for n in training.DP_SAFE_SCALARS} | {
    "privacy/epsilon", "privacy/noise_multiplier", "perf/steps_per_sec",
    "samples/image_and_label_overlay", "run/plan", "privacy/statement"}


def _files(folder):
    return sorted(os.path.join(r, n) for r, _, names in os.walk(folder) for n in names)


def _tags(folder):
    tags = set()
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    return tags


def _secrets(run_dir, info):
    """Byte strings that must never appear in a release: ids, paths, checksums, per-patient
    normalisation parameters, the training seed flag."""
    run_json = workdir.read_run(run_dir)
    ids = sorted(info["patients"])
    paths = [run_json["data"], os.path.abspath(run_dir), os.path.dirname(run_json["data"])]
    paths += [f for p in info["patients"].values() for f in p["files"].values() if f]
    sums = [h for p in info["patients"].values() for h in p["sha256"].values()]
    sums.append(run_json["data_fingerprint"])
    norms = [repr(p["normalization"]["high"]) for p in info["patients"].values()]
    return ids, [s.encode() for s in paths + sums + norms + ["--tf_seed", "tf_seed"]]


def _scannable_bytes(path):
    """The file's bytes; for a PNG every chunk but the compressed pixels (IDAT), where a short
    id like b'tr2' turns up by chance and no text can hide."""
    data = open(path, "rb").read()
    if not path.endswith(".png"):
        return data
    out, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] != b"IDAT":
            out.append(data[pos:pos + 12 + length])
        pos += 12 + length
    return b"".join(out)


def _scan(folder, run_dir, info):
    """Assert nothing private is in any file of ``folder``."""
    ids, secrets = _secrets(run_dir, info)
    id_pattern = re.compile(rb"(?<![A-Za-z0-9_])(" + b"|".join(
        re.escape(i.encode()) for i in ids) + rb")(?![A-Za-z0-9_])")
    files = _files(folder)
    assert files
    for path in files:
        data = _scannable_bytes(path)
        assert not [s for s in secrets if s in data], path
        assert not id_pattern.search(data), (path, id_pattern.search(data))
        if path.endswith(TEXT):
            text = data.decode()
            assert not re.search(r"[0-9a-f]{64}", text), path          # no SHA-256 at all
            assert not re.search(r"(^|[\s\"'`(])/[A-Za-z0-9_.-]+/", text), path  # no abs path


def test_layout_and_owner_only_permissions(tiny_workdir):
    w = tiny_workdir
    assert sorted(os.listdir(w)) == [workdir.PRIVATE, workdir.RELEASE]
    assert sorted(os.listdir(workdir.release_dir(w))) == sorted(workdir.RELEASE_NAMES)
    assert {workdir.FLAGS_TXT, workdir.RUN_JSON, workdir.CHECKPOINTS} <= set(
        os.listdir(workdir.private_dir(w)))
    assert not os.path.exists(workdir.path(w, workdir.TENSORBOARD_PRIVATE))   # not asked for
    for top in (workdir.release_dir(w), workdir.private_dir(w)):
        for root, dirs, names in os.walk(top):
            assert os.stat(root).st_mode & 0o777 == 0o700, root
            for n in names:
                assert os.stat(os.path.join(root, n)).st_mode & 0o777 == 0o600, (root, n)
    assert workdir.is_finished(w) and not workdir.is_flat(w)
    assert workdir.path(w, workdir.AUDIT).startswith(workdir.private_dir(w))
    assert workdir.path(w, workdir.EVAL).startswith(workdir.private_dir(w))
    with pytest.raises(ValueError):
        workdir.path(w, "notes.txt")


def test_release_holds_nothing_private(tiny_workdir, tiny_dataset):
    info = records.read_dataset_json(tiny_dataset[1])
    release = workdir.release_dir(tiny_workdir)
    _scan(release, tiny_workdir, info)
    with pytest.raises(AssertionError):   # the scan finds them where they are (run.json)
        _scan(workdir.private_dir(tiny_workdir), tiny_workdir, info)
    # TensorBoard: DP-safe tags only, although the run computed the private ones
    tags = _tags(release)
    assert tags and tags <= RELEASE_TAGS, sorted(tags - RELEASE_TAGS)
    assert {"train/generator_loss", "train/update_norm", "privacy/epsilon"} <= tags
    for name in training.PRIVATE_SCALARS:
        assert name not in training.DP_SAFE_SCALARS


def test_released_generator_has_generator_variables_only(tiny_workdir):
    gen = workdir.path(tiny_workdir, workdir.GENERATOR)
    saved = dict(tf.train.list_variables(os.path.join(gen, "variables", "variables")))
    saved.pop("_CHECKPOINTABLE_OBJECT_GRAPH")
    assert saved and all(n.startswith("generator/") for n in saved), sorted(saved)
    _, gan, _ = run.restore(tiny_workdir)
    shapes = sorted(tuple(v.shape) for v in gan.release_generator.variables)
    assert sorted(tuple(s) for s in saved.values()) == shapes
    # none of the critic's (distinct architecture: its first kernel reads 2 channels)
    critic_shapes = {tuple(v.shape) for v in gan.critic.variables}
    assert not [s for s in saved.values() if tuple(s) in critic_shapes - set(shapes)]
    assert int(sum(np.prod(s) for s in saved.values())) == sum(
        int(np.prod(v.shape)) for v in gan.release_generator.variables)


def test_release_normalisation_is_declared_and_holds_no_statistics(tiny_workdir, tiny_dataset):
    info = records.read_dataset_json(tiny_dataset[1])
    extra = os.path.join(workdir.path(tiny_workdir, workdir.GENERATOR), workdir.ASSETS_EXTRA)
    norm = json.load(open(os.path.join(extra, workdir.NORMALIZATION_JSON)))
    assert set(norm) <= {"method", "percentile", "fixed_range", "target_range", "formula",
                         "data_dependent", "note"}
    assert "low" not in norm and "high" not in norm
    assert norm["method"] == info["normalization"]["method"] == "percentile"
    card = workdir.read_card(tiny_workdir)
    # percentile normalisation is per patient: declared on the card, not hidden
    assert norm["data_dependent"] is True
    assert card["normalization_data_independent"] is (not norm["data_dependent"])
    # and no per-patient parameter sits anywhere in it (they are in dataset.json only)
    highs = {p["normalization"]["high"] for p in info["patients"].values()}
    assert not highs & {v for v in norm.values() if isinstance(v, float)}


def test_release_command_copies_exactly_the_release(tiny_workdir, tiny_dataset, tmp_path):
    out = str(tmp_path / "shared")
    done = subprocess.run([sys.executable, "-m", "tfdpgan.export", f"--workdir={tiny_workdir}",
                           f"--release={out}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    release = workdir.release_dir(tiny_workdir)
    rel = lambda root: sorted(os.path.relpath(p, root) for p in _files(root))  # noqa: E731
    assert rel(out) == rel(release)
    for name in rel(out):
        assert open(os.path.join(out, name), "rb").read() == \
            open(os.path.join(release, name), "rb").read(), name
    assert os.stat(out).st_mode & 0o777 == 0o700
    _scan(out, tiny_workdir, records.read_dataset_json(tiny_dataset[1]))
    fn, latent_dim, _ = export.load_generator(os.path.join(out, workdir.GENERATOR))
    assert fn(latent=tf.zeros([2, latent_dim]))["image"].shape[0] == 2
    again = subprocess.run([sys.executable, "-m", "tfdpgan.export", f"--workdir={tiny_workdir}",
                            f"--release={out}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_release_refusals_write_nothing(tiny_workdir, tmp_path):
    w = _copy(tiny_workdir, tmp_path / "w")
    with pytest.raises(errors.SettingsError, match="inside the workdir"):
        export.copy_release(w, os.path.join(w, "out"))
    stray = os.path.join(workdir.release_dir(w), "notes.txt")   # not a release name
    open(stray, "w").write("tr0 /data/tr0.nii.gz")
    with pytest.raises(errors.WorkdirError, match="notes.txt"):
        export.copy_release(w, str(tmp_path / "a"))
    os.remove(stray)
    extra = os.path.join(workdir.path(w, workdir.GENERATOR), workdir.ASSETS_EXTRA, "ids.json")
    open(extra, "w").write("{}")                                # unknown file in the model
    with pytest.raises(errors.WorkdirError, match="ids.json"):
        export.copy_release(w, str(tmp_path / "b"))
    os.remove(extra)
    os.symlink(workdir.path(w, workdir.RUN_JSON),
               os.path.join(workdir.path(w, workdir.TENSORBOARD), "events.out.tfevents.x"))
    with pytest.raises(errors.WorkdirError, match="symlink"):
        export.copy_release(w, str(tmp_path / "c"))
    os.remove(os.path.join(workdir.path(w, workdir.TENSORBOARD), "events.out.tfevents.x"))
    os.remove(workdir.path(w, workdir.PRIVACY_JSON))            # unfinished
    with pytest.raises(errors.WorkdirError, match="not finished"):
        export.copy_release(w, str(tmp_path / "d"))
    assert not [n for n in os.listdir(tmp_path) if n not in ("w",)]


def _flatten(w):
    """An old (pre-split) workdir: everything directly in it."""
    for folder in (workdir.release_dir(w), workdir.private_dir(w)):
        for name in os.listdir(folder):
            target = name if name != workdir.TENSORBOARD else "events"
            os.rename(os.path.join(folder, name), os.path.join(w, target))
        os.rmdir(folder)


def test_old_flat_workdirs_are_read_in_place(tiny_workdir, tiny_dataset, tmp_path):
    w = _copy(tiny_workdir, tmp_path / "old")
    _flatten(w)
    assert workdir.is_flat(w) and workdir.is_finished(w)
    assert workdir.read_card(w)["epsilon"] == workdir.read_card(tiny_workdir)["epsilon"]
    assert workdir.path(w, workdir.GENERATOR) == os.path.join(w, workdir.GENERATOR)
    assert workdir.path(w, workdir.AUDIT) == os.path.join(w, workdir.AUDIT)
    loaded = inputs.load_run(eval_config.EvalConfig(workdir=w))     # evaluate finds it
    assert loaded.generator_dir == os.path.join(w, workdir.GENERATOR)
    assert run.restore(w)[2]["data"] == tiny_dataset[1]              # export / audit
    copied = export.copy_release(w, str(tmp_path / "shared"))        # no event files
    assert sorted(copied) == sorted(os.path.relpath(p, w) for p in _files(w)
                                    if os.path.relpath(p, w).split(os.sep)[0] in (
                                        workdir.GENERATOR, workdir.PRIVACY_JSON,
                                        workdir.PRIVACY_MD, workdir.SAMPLES_PNG))
    with pytest.raises(errors.WorkdirError, match="older tfdpgan"):   # no mixed layouts
        training.train(run.TrainConfig(workdir=w, data=tiny_dataset[1], epsilon=3.0,
                                       **dict(TINY, critic_steps=8)))
    assert not os.path.exists(workdir.release_dir(w))


def test_sample_takes_a_workdir_and_points_to_the_moved_generator(tiny_workdir, tmp_path):
    sample.sample_to(tiny_workdir, 3, str(tmp_path / "syn"), "png")   # its release/generator
    assert os.path.isfile(tmp_path / "syn" / workdir.PRIVACY_JSON)
    old_place = os.path.join(tiny_workdir, workdir.GENERATOR)          # before the split
    with pytest.raises(errors.MissingFileError, match=re.escape(
            workdir.path(tiny_workdir, workdir.GENERATOR))):
        sample.sample_to(old_place, 3, str(tmp_path / "no"), "png")
