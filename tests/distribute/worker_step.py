"""One private critic step (noise off) as one worker of a MultiWorkerMirroredStrategy.

    TF_CONFIG=... python tests/distribute/worker_step.py IN.npz OUT.npz

IN.npz holds the critic's initial weights (w0, w1, ...) and the global batch (real, fake,
weight). The chief writes the updated critic weights to OUT.npz. Used by test_multi_worker.py.
"""
import sys

import numpy as np
import tensorflow as tf

from tfdpgan import distribute
from tfdpgan.dp import step
from tfdpgan.gan import losses, models


def main(inp, out):
    strategy = distribute.make_strategy("multi_worker")
    data = np.load(inp)
    weights = [data[f"w{i}"] for i in range(int(data["num_weights"]))]
    with strategy.scope():
        critic = models.build_critic(int(data["patch"]), base_filters=4)
        critic.set_weights(weights)

        def loss(model, rows):
            real, fake, weight = rows
            return weight * losses.critic_loss("wgan")(model, (real, fake))

        private = step.PrivateStep(critic, tf.keras.optimizers.legacy.SGD(1.0), loss,
                                   l2_norm_clip=float(data["clip"]), noise_multiplier=0.0,
                                   expected_batch_size=float(data["expected"]),
                                   rng=tf.random.Generator.from_seed(0))
    both = tf.concat([data["real"], data["fake"]], -1)
    both, weight = distribute.pad_global_batch(both, tf.constant(data["weight"]),
                                               strategy.num_replicas_in_sync,
                                               int(data["chunk"]))

    distribute.replicated(
        strategy, lambda both, weight: private((both[..., :2], both[..., 2:], weight)))(
        both, weight)
    result = critic.get_weights()
    if distribute.is_chief(strategy):
        np.savez(out, **{f"w{i}": w for i, w in enumerate(result)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
