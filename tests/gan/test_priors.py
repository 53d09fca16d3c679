"""Public priors (tfdpgan.gan.priors): the built-in prior the demo starts from, exporting one
from a phantom run, the refusals, and the evaluation's row for the prior alone."""
import dataclasses
import json
import os

import numpy as np
import pytest

from tfdpgan import errors, workdir
from tfdpgan.data import default_data, records
from tfdpgan.dp import card as privacy_card
from tfdpgan.evaluation import evaluate, unet
from tfdpgan.gan import priors, run, training
from tiny import TINY, parse_train_flags

# a phantom small enough to generate in seconds; TINY's networks at 16x16 patches
PHANTOM = default_data.PhantomDataConfig(num_patients=3, num_test=1, shape=(40, 40, 12),
                                         patch_size=16, patches_per_patient=20,
                                         val_fraction=0.34)


def _config(tmp_path, name, **changes):
    base = dict(TINY, critic_steps=6, epsilon=3.0, sampling_seed=5)
    base.update(changes)
    return run.TrainConfig(workdir=str(tmp_path / name), **base)


def _demo_wgan(config):
    plan = privacy_card.make_plan(num_records=9000, expected_batch_size=config.batch_size,
                                  critic_steps=config.critic_steps, epsilon=config.epsilon,
                                  accountant=config.accountant)
    return run.build_wgan(config, config.phantom.patch_size, plan)


# ---- the shipped prior ------------------------------------------------------------------

def test_builtin_prior_is_public_phantom_training_with_the_demos_networks(monkeypatch):
    meta = priors.read_builtin()           # also checks weights.npz against its SHA-256
    demo = parse_train_flags(monkeypatch)
    assert demo.init_from == priors.BUILTIN
    assert demo.critic_frozen_stages == priors.DEFAULT_FROZEN_STAGES
    priors.check_fits(priors.BUILTIN, priors.networks(demo, demo.phantom.patch_size))
    assert meta["private"] is False and meta["epsilon"] is None
    source = meta["source_run"]
    assert source["epsilon"] == "inf" and source["noise_multiplier"] == 0.0
    # another site and other patients than the demo's private phantom (whose patient seeds
    # derive from its seed: the same seed would mean the same vessel trees)
    assert source["phantom"]["preset"] != demo.phantom.preset
    assert source["phantom"]["seed"] != demo.phantom.seed
    assert meta["source_sha256"] and all(len(h) == 64 for h in meta["source_sha256"])
    assert os.sep not in meta["data"] and "phantom" in meta["data"]


def test_builtin_prior_loads_into_the_demo_networks(monkeypatch):
    """Every layer of the three networks gets the shipped weights, also with the demo's
    frozen critic stages (Keras lists frozen weights last); its samples are pairs."""
    demo = parse_train_flags(monkeypatch)
    gan = _demo_wgan(demo)
    before = [w.copy() for w in gan.critic.get_weights()]
    priors.load_into(gan, priors.BUILTIN)
    meta = priors.read_builtin()
    with np.load(os.path.join(priors.BUILTIN_DIR, priors.WEIGHTS_NPZ)) as npz:
        for name, model in (("generator", gan.generator), ("critic", gan.critic),
                            ("release_generator", gan.ema_generator)):
            for i, layer in enumerate(model.layers):
                for j, value in enumerate(layer.get_weights()):
                    np.testing.assert_array_equal(value, npz[f"{name}.{i:03d}.{j}"])
            assert len(model.layers) == len(meta["layers"][name])
    assert any(not np.array_equal(a, b) for a, b in zip(before, gan.critic.get_weights()))
    fn, latent_dim, patch = priors.sampler(priors.BUILTIN)
    out = fn(latent=np.random.default_rng(0).standard_normal((4, latent_dim), np.float32))
    assert patch == 32 and out["image"].shape == (4, 32, 32, 1)
    assert np.abs(out["image"].numpy()).max() <= 1.0
    assert set(np.unique(out["label"].numpy())) <= {0.0, 1.0}


def test_flagfiles_without_the_demo_networks_train_from_scratch(monkeypatch):
    """The built-in prior fits only the demo's networks: every other recipe says so."""
    for cfg in ("paper_wgan.cfg", "paper_dp.cfg", "leaky_reference.cfg", "pretrain_phantom.cfg"):
        config = parse_train_flags(monkeypatch, f"--flagfile=flags/{cfg}")
        assert config.init_from is None and config.critic_frozen_stages == 0, cfg
    scratch = parse_train_flags(monkeypatch, "--init_from=")
    assert scratch.init_from is None and scratch.critic_frozen_stages == 0
    assert parse_train_flags(monkeypatch, "--critic_frozen_stages=1").critic_frozen_stages == 1


def test_builtin_prior_refuses_other_networks_before_any_folder(patch_records, tmp_path):
    config = _config(tmp_path, "w", data=patch_records, init_from=priors.BUILTIN)
    with pytest.raises(errors.SettingsError, match=r"built-in prior has 32x32 patches.*"
                                                   r"--init_from= to train from scratch"):
        training.train(config)
    assert not os.path.exists(config.workdir)


# ---- exporting a prior, and using it ------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny non-private phantom run exported as a built-in prior into a scratch folder."""
    root = tmp_path_factory.mktemp("prior")
    config = _config(root, "prior", epsilon=float("inf"), phantom=PHANTOM,
                     cache_dir=str(root / "cache"))
    training.train(config)
    out = str(root / "builtin_prior")
    meta = priors.export_prior(config.workdir, out, command="test")
    return {"config": config, "out": out, "meta": meta,
            "rec": default_data.prepare(PHANTOM, str(root / "cache"))[1]}


def test_exported_prior_starts_a_private_run_and_the_card_says_so(exported, patch_records,
                                                                   tmp_path, monkeypatch):
    monkeypatch.setattr(priors, "BUILTIN_DIR", exported["out"])
    meta = exported["meta"]
    assert meta["command"] == "test" and meta["critic_steps"] == 6
    info = records.read_dataset_json(exported["rec"])
    assert set(meta["source_sha256"]) == {h for p in info["patients"].values()
                                          for k, h in p["sha256"].items() if k != "mask"}
    plain = training.train(_config(tmp_path, "plain", data=patch_records))
    config = _config(tmp_path, "fine", data=patch_records, init_from=priors.BUILTIN,
                     critic_frozen_stages=1)
    card = training.train(config)
    assert {k: v for k, v in card.items() if k != "public_prior"} == {
        k: v for k, v in plain.items() if k != "public_prior"}
    assert card["public_prior"] == {
        "workdir": "builtin", "data": meta["data"], "prior_private": False,
        "prior_epsilon": None, "prior_critic_steps": 6,
        "prior_sha256": meta["weights_sha256"], "critic_frozen_stages": 1}
    assert "tfdpgan's built-in prior, trained on `built-in phantom" in open(
        workdir.path(config.workdir, workdir.PRIVACY_MD)).read()
    _, source, _ = run.restore(exported["config"].workdir)
    _, fine, _ = run.restore(config.workdir)
    frozen = [a for a in fine.critic.layers if not a.trainable and a.get_weights()]
    assert frozen
    for a, b in zip(fine.critic.layers, source.critic.layers):
        if a in frozen:
            assert all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_a_wider_generator_leaves_the_critic_and_the_card_alone(exported, patch_records,
                                                                tmp_path, monkeypatch):
    """--generator_filters widens the generator only: the critic (the network that reads
    private data) and so the DP noise and the card are those of the plain run; a prior of
    another generator width is refused before any folder is made."""
    wide = _config(tmp_path, "wide", data=patch_records, generator_filters=8)
    plain = _config(tmp_path, "plain", data=patch_records)
    assert training.train(wide) == training.train(plain)
    _, wide_gan, _ = run.restore(wide.workdir)
    _, plain_gan, _ = run.restore(plain.workdir)
    assert [v.shape for v in wide_gan.critic.weights] == [
        v.shape for v in plain_gan.critic.weights]
    assert wide_gan.generator.count_params() > 2 * plain_gan.generator.count_params()
    monkeypatch.setattr(priors, "BUILTIN_DIR", exported["out"])
    refused = _config(tmp_path, "refused", data=patch_records, init_from=priors.BUILTIN,
                      generator_filters=8)
    with pytest.raises(errors.SettingsError, match="--generator_filters=4.*"
                                                   "--generator_filters=8"):
        training.train(refused)
    assert not os.path.exists(refused.workdir)


def test_exported_prior_refuses_its_own_training_data(exported, tmp_path, monkeypatch):
    monkeypatch.setattr(priors, "BUILTIN_DIR", exported["out"])
    config = _config(tmp_path, "leak", data=exported["rec"], init_from=priors.BUILTIN)
    with pytest.raises(errors.SettingsError, match="shares [1-9]\\d* source files"):
        training.train(config)
    assert not os.path.exists(config.workdir)


def test_a_prior_continued_in_stages_describes_every_stage(exported, patch_records, tmp_path,
                                                           monkeypatch):
    """A prior trained further from the built-in one (on other public volumes) is exported
    with both stages: steps summed, every stage's volumes refused as private data. A run, or
    an export, whose prior changed under the same name is refused."""
    monkeypatch.setattr(priors, "BUILTIN_DIR", exported["out"])
    first = exported["meta"]
    fine = _config(tmp_path, "fine", data=patch_records, init_from=priors.BUILTIN)
    training.train(fine)
    assert workdir.read_run(fine.workdir)["prior_sha256"] == first["weights_sha256"]
    later = dataclasses.replace(PHANTOM, seed=PHANTOM.seed + 7)
    stage2 = _config(tmp_path, "stage2", epsilon=float("inf"), phantom=later,
                     cache_dir=str(tmp_path / "cache"), init_from=priors.BUILTIN)
    training.train(stage2)
    out2 = str(tmp_path / "prior2")
    meta = priors.export_prior(stage2.workdir, out2, command="stage 2")
    info2 = records.read_dataset_json(default_data.prepare(later, str(tmp_path / "cache"))[1])
    own = {h for p in info2["patients"].values() for k, h in p["sha256"].items() if k != "mask"}
    assert own and not own & set(first["source_sha256"])
    assert set(meta["source_sha256"]) == own | set(first["source_sha256"])
    assert meta["critic_steps"] == first["critic_steps"] + stage2.critic_steps
    assert meta["continued_from"]["weights_sha256"] == first["weights_sha256"]
    assert meta["data"] == (f"{first['data']}; then built-in phantom, preset {later.preset}, "
                            f"seed {later.seed}, {later.num_patients} patients")
    monkeypatch.setattr(priors, "BUILTIN_DIR", out2)
    assert priors.fingerprint(priors.BUILTIN) == meta["weights_sha256"] != first["weights_sha256"]
    with pytest.raises(errors.SettingsError, match="shares [1-9]\\d* source files"):
        training.train(_config(tmp_path, "leak", data=exported["rec"], init_from=priors.BUILTIN))
    with pytest.raises(errors.WorkdirError, match="different settings \\(prior_sha256\\)"):
        training.train(fine)
    with pytest.raises(errors.SettingsError, match="has changed since"):
        priors.export_prior(stage2.workdir, str(tmp_path / "prior3"))
    assert not os.path.exists(tmp_path / "prior3")


def test_export_refuses_a_private_run_or_other_data(exported, patch_records, tmp_path):
    private = _config(tmp_path, "private", phantom=PHANTOM, cache_dir=os.path.dirname(
        os.path.dirname(exported["rec"])))
    training.train(private)
    with pytest.raises(errors.SettingsError, match="non-private"):
        priors.export_prior(private.workdir, str(tmp_path / "out"))
    other = _config(tmp_path, "other", data=patch_records, epsilon=float("inf"))
    training.train(other)
    with pytest.raises(errors.SettingsError, match="built-in phantom"):
        priors.export_prior(other.workdir, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_a_tampered_prior_is_refused(exported, tmp_path, monkeypatch):
    copy = str(tmp_path / "copy")
    os.makedirs(copy)
    for name in (priors.PRIOR_JSON, priors.WEIGHTS_NPZ):
        with open(os.path.join(exported["out"], name), "rb") as f:
            data = f.read()
        with open(os.path.join(copy, name), "wb") as f:
            if name == priors.WEIGHTS_NPZ:      # one byte in the middle changed
                middle = len(data) // 2
                data = data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:]
            f.write(data)
    with pytest.raises(errors.SettingsError, match="not the file prior.json describes"):
        priors.read_builtin(copy)


def test_evaluation_scores_the_prior_alone(exported, tiny_dataset, tmp_path, monkeypatch):
    """A run started from a prior gets a row for the prior's samples alone (FID too), trained
    and selected like the synthetic row; --noprior_row leaves it out."""
    monkeypatch.setattr(priors, "BUILTIN_DIR", exported["out"])
    config = _config(tmp_path, "fine", data=tiny_dataset[1], init_from=priors.BUILTIN)
    training.train(config)
    tiny_unet = unet.UNetConfig(base_filters=4, depth=2, learning_rate=3e-3, batch_size=16,
                                epochs=1, steps_per_epoch=2, augment=False, max_restarts=0)
    ev = evaluate.EvalConfig(workdir=config.workdir, num_synthetic=32, fid=False,
                             unet=tiny_unet, grid="", threshold_baseline=False)
    report = evaluate.evaluate(ev)
    prior = report["baselines"]["prior"]
    assert report["source"] == "synthetic" and prior["source"] == priors.BUILTIN
    assert len(prior["per_patient"]) == len(report["per_patient"]) == 2
    assert prior["selection"]["method"] == "synthetic_val"
    assert prior["selection"]["key"] != report["selection"]["key"]
    assert "public prior's samples alone" in open(os.path.join(
        workdir.path(config.workdir, evaluate.EVAL_DIR), "REPORT.md")).read()
    without = evaluate.evaluate(dataclasses.replace(ev, prior_row=False,
                                                    out_dir=str(tmp_path / "eval2")))
    assert "prior" not in without["baselines"]
    # a workdir prior that is gone: one clear message naming it
    moved = json.load(open(workdir.path(config.workdir, workdir.RUN_JSON)))
    moved["init_from"] = str(tmp_path / "gone")
    json.dump(moved, open(workdir.path(config.workdir, workdir.RUN_JSON), "w"))
    with pytest.raises(errors.EvaluationError, match="gone.*--noprior_row"):
        evaluate.evaluate(dataclasses.replace(ev, out_dir=str(tmp_path / "eval3")))
