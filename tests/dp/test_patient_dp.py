"""Patient-level DP: one record per patient, accounted over patients; plan == run."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tfdpgan import workdir as workdir_lib
from tfdpgan.dp import accounting
from tfdpgan.dp import card as privacy_card
from tfdpgan.data import pipeline, records
from tfdpgan.gan import run, training
from tiny import CARD_KEYS, TINY

K = 4


@pytest.fixture(scope="module")
def patient_config(patch_records, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("patient") / "w")
    return run.TrainConfig(workdir=workdir, data=patch_records, epsilon=3.0,
                             privacy_unit="patient", patches_per_patient=K,
                             **dict(TINY, batch_size=2, critic_steps=12))


@pytest.fixture(scope="module")
def patient_run(patient_config):
    return patient_config, training.train(patient_config, flags_text="--privacy_unit=patient\n")


def test_patient_batches_hold_at_most_k_rows_per_patient(patient_config, patch_records):
    arrays = pipeline.load_arrays(patch_records, "train")
    n = privacy_card.count_records(records.read_dataset_json(patch_records), "patient")
    assert n == sum(len(r) > 0 for r in arrays.patient_records())
    assert n == records.read_dataset_json(patch_records)["splits"]["train"]["num_patients"]
    plan = privacy_card.Plan(sampling_rate=0.5, critic_steps=20, delta=1e-5,
                             noise_multiplier=1.0, num_records=n, expected_batch_size=n / 2)
    groups = arrays.patient_records()
    own = [{arrays.images[i].tobytes() for i in g} for g in groups]
    seen_rows = 0
    for pairs, weight in training.batches(patient_config, arrays, plan, seed=3, start_step=0):
        pairs, weight = pairs.numpy(), weight.numpy()
        assert len(pairs) % K == 0 and len(weight) == len(pairs)
        for r in range(len(pairs) // K):
            w = weight[r * K:(r + 1) * K]
            assert set(np.unique(w)) <= {0.0, 1.0 / K} and w.sum() <= 1.0 + 1e-6
            images = {pairs[r * K + j, ..., 0].tobytes() for j in range(K) if w[j] > 0}
            # all real rows of one record come from one patient
            assert any(images <= o for o in own)
        seen_rows += len(pairs)
    assert seen_rows > 0


def test_patient_level_card(patient_run, patch_records):
    config, card = patient_run
    assert CARD_KEYS <= set(card)
    n = records.read_dataset_json(patch_records)["splits"]["train"]["num_patients"]
    assert card["privacy_unit"] == "patient" and card["num_records"] == n
    assert card["patches_per_patient"] == K
    assert card["sampling_rate"] == pytest.approx(config.batch_size / n)
    assert card["delta"] == pytest.approx(min(1e-5, 1 / (10 * n)))
    assert card["accountant"] == "pld" and card["epsilon"] == card["epsilon_pld"]
    assert card["epsilon_pld"] <= card["epsilon_rdp"]
    assert 0.9 * 3.0 <= card["epsilon"] <= 3.0
    # recomputed from the card's numbers by the accountant
    assert card["epsilon_rdp"] == pytest.approx(accounting.compute_epsilon(
        card["noise_multiplier"], card["sampling_rate"], card["critic_steps"], card["delta"],
        "rdp"))
    text = open(workdir_lib.path(config.workdir, workdir_lib.PRIVACY_MD)).read()
    assert "per **patient**" in text and "the record is the patient" in text


@pytest.mark.slow
def test_plan_mode_agrees_with_the_trained_run(patient_run, patch_records):
    config, card = patient_run
    planned = privacy_card.plan_card(
        num_records=card["num_records"], batch_size=config.batch_size,
        critic_steps=config.critic_steps, epsilon=config.epsilon, noise_multiplier=None,
        delta=None, accountant=config.accountant, privacy_unit="patient",
        patches_per_patient=K)
    out = subprocess.run(
        [sys.executable, "-m", "tfdpgan.privacy", "--plan", f"--data={patch_records}",
         "--privacy_unit=patient", f"--patches_per_patient={K}",
         f"--batch_size={config.batch_size}", f"--critic_steps={config.critic_steps}",
         "--epsilon=3"], capture_output=True, text=True, check=True).stdout
    printed = json.loads(out[out.index("{"):])
    for key in ("epsilon", "epsilon_rdp", "epsilon_pld", "noise_multiplier", "delta",
                "sampling_rate", "critic_steps", "num_records", "privacy_unit"):
        assert planned[key] == pytest.approx(card[key]), key
        assert printed[key] == pytest.approx(card[key]), key


def test_plan_mode_rejects_a_missing_data_set(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tfdpgan.privacy", "--plan", f"--data={tmp_path}",
         "--batch_size=2", "--critic_steps=10", "--epsilon=3"], capture_output=True, text=True)
    assert result.returncode != 0 and "dataset.json" in result.stderr


def test_patch_level_card_states_the_patient_bound():
    card = privacy_card.make_card(private=True, noise_multiplier=1.0, l2_norm_clip=1.0,
                             expected_batch_size=64, num_records=9000, critic_steps=100,
                             delta=1e-5, accountant="pld", target_epsilon=None,
                             patches_per_patient=500)
    text = privacy_card.render_markdown(card)
    eps_k, _ = accounting.group_privacy_epsilon_delta(card["epsilon"], 1e-5, 500)
    assert "per **patch**" in text and "500 patches" in text and f"{eps_k:.3g}" in text


def test_unknown_unit_is_refused(patient_config):
    with pytest.raises(ValueError, match="privacy_unit"):
        training.train(dataclasses.replace(patient_config, privacy_unit="slice",
                                        workdir=patient_config.workdir + "_bad"))
    assert not os.path.exists(patient_config.workdir + "_bad")


def test_card_quotes_tf_privacy_with_the_same_epsilon():
    """PRIVACY.md carries TF Privacy's own statement; its Poisson ε equals the card's."""
    import re
    for accountant in ("rdp", "pld"):
        plan = privacy_card.make_plan(num_records=9000, expected_batch_size=64,
                                      critic_steps=300, epsilon=3.0, accountant=accountant)
        card = privacy_card.make_card(
            private=True, noise_multiplier=plan.noise_multiplier, l2_norm_clip=1.0,
            expected_batch_size=64, num_records=9000, critic_steps=plan.critic_steps,
            delta=plan.delta, accountant=accountant, target_epsilon=3.0)
        text = privacy_card.render_markdown(card)
        assert "compute_dp_sgd_privacy_statement" in text
        quoted = float(re.search(r"Poisson sampling \(\*\):\s+([0-9.]+)", text).group(1))
        assert quoted == pytest.approx(card["epsilon"], abs=2e-3)
        assert f"{plan.critic_steps * 64 / 9000:.4f}"[:5] in text   # epochs as TF Privacy counts
