"""The demo recipe (flags/demo.cfg, issue #11): what it trains, and what it leaves unchanged."""
import pytest

from tfdpgan.dp import card as privacy_card, clipping
from tfdpgan.evaluation import config as eval_config, stitching
from tfdpgan.gan import models
from tiny import parse_train_flags


def test_demo_recipe_fits_the_evaluation(monkeypatch):
    """32x32 patches: the default evaluation U-Net (depth 4) and the whole-volume tiling take
    them, and the demo critic has no cross-example layer (per-example clipping holds)."""
    config = parse_train_flags(monkeypatch, "--flagfile=flags/demo.cfg")
    patch = config.phantom.patch_size
    assert patch == 32 and config.batch_size == 256 and config.gan.ema_decay == 0.99
    assert patch % 2**eval_config.DEFAULT_UNET.depth == 0
    assert len(stitching.tile_origins((64, 80), patch, 0.5)) > 0
    critic = models.build_critic(patch, config.base_filters, normalization=config.critic_norm)
    clipping.check_per_example(critic)
    # the smaller critic input is the point: far fewer weights share the DP noise
    assert critic.count_params() < models.build_critic(64, config.base_filters).count_params() / 3


def test_demo_plan_at_epsilon_3(monkeypatch):
    """N = 18 x 500 training patches, 256 expected per step, 3000 steps within ε = 3."""
    config = parse_train_flags(monkeypatch, "--flagfile=flags/demo.cfg")
    plan = privacy_card.make_plan(num_records=9000, expected_batch_size=config.batch_size,
                                  critic_steps=config.critic_steps, epsilon=config.epsilon,
                                  accountant=config.accountant)
    assert plan.critic_steps == config.critic_steps
    assert 2.0 < plan.noise_multiplier < 2.6       # 2.30 (pld), was 0.86 at batch 64
    # noise std per step relative to the summed signal B*C: about 1.5x lower than batch 64
    assert plan.noise_multiplier / config.batch_size < 0.0135 / 1.4


@pytest.mark.parametrize("cfg", ["paper_wgan.cfg", "paper_dp.cfg", "leaky_reference.cfg"])
def test_reference_recipes_keep_the_raw_generator(monkeypatch, cfg):
    """The paper's reproduction and the other references do not inherit the demo's EMA."""
    assert parse_train_flags(monkeypatch, f"--flagfile=flags/{cfg}").gan.ema_decay == 0.0


def test_public_prior_fits_the_demo(monkeypatch):
    """A demo run can start from the public prior (--init_from needs the same networks), and
    the prior is non-private public-data training."""
    demo = parse_train_flags(monkeypatch)
    prior = parse_train_flags(monkeypatch, "--flagfile=flags/pretrain_phantom.cfg")
    assert not prior.private and prior.epsilon == float("inf")
    assert prior.phantom.patch_size == demo.phantom.patch_size
    assert (prior.base_filters, prior.gan.latent_dim, prior.critic_norm) == (
        demo.base_filters, demo.gan.latent_dim, demo.critic_norm)
    # another site and other patients than the demo's private phantom, so --init_from accepts
    # it for the demo (a prior sharing source volumes is refused: tests/gan/test_recipe.py)
    assert prior.phantom.preset != demo.phantom.preset and prior.phantom.seed != demo.phantom.seed


def test_fine_tuning_recipe_starts_from_the_public_prior(monkeypatch):
    """flags/finetune_prior.cfg: the demo recipe, started from pretrain_phantom.cfg's workdir
    with the same networks, and the critic stages it freezes exist and leave trainable weights
    for DP to train."""
    demo = parse_train_flags(monkeypatch)
    prior = parse_train_flags(monkeypatch, "--flagfile=flags/pretrain_phantom.cfg")
    fine = parse_train_flags(monkeypatch, "--flagfile=flags/finetune_prior.cfg")
    assert fine.init_from == prior.workdir and fine.private and fine.epsilon == demo.epsilon
    assert (fine.phantom, fine.batch_size, fine.critic_steps, fine.base_filters) == (
        demo.phantom, demo.batch_size, demo.critic_steps, demo.base_filters)
    assert fine.critic_frozen_stages > 0 and fine.generator_upsample == prior.generator_upsample
    critic = models.build_critic(fine.phantom.patch_size, fine.base_filters,
                                 normalization=fine.critic_norm)
    total = critic.count_params()
    assert 0 < models.freeze_critic_stages(critic, fine.critic_frozen_stages) < total
