"""When the generator steps: every n critic steps, n fixed or adapted.

Adaptive (Bie, Kamath & Zhang, "Private GANs, revisited", TMLR 2023): under DP the critic
needs many more updates per generator update than without; they adapt n to the critic's
accuracy on FRESH generated samples. Here, after each generator step, the critic scores a
batch of new fakes; if fewer than ``target`` of them are recognised as fake (score < 0,
i.e. sigmoid(D) < 1/2 for the ns loss, the wrong side of the hinge margin's centre for hinge),
the critic is too weak to guide the generator and n doubles (up to ``max_n``).

Privacy: the signal reads only the critic (the output of the DP mechanism) and generated
samples, never private data, so the schedule is post-processing and costs no privacy. The
state (n) is a tf.Variable in the checkpoint, so a resumed run follows the same schedule.
"""
import tensorflow as tf

__all__ = ["CriticSchedule"]


class CriticSchedule(tf.Module):
    """Counts critic steps and says when the generator steps."""

    def __init__(self, n_critic: int, adaptive: bool = False, target: float = 0.6,
                 max_n: int = 200):
        super().__init__(name="critic_schedule")
        self.adaptive, self.target, self.max_n = adaptive, float(target), int(max_n)
        self.n = tf.Variable(int(n_critic), dtype=tf.int64, trainable=False, name="n_critic")
        self.since = tf.Variable(0, dtype=tf.int64, trainable=False, name="since_generator")

    def critic_stepped(self) -> bool:
        """Record one critic step; True when the generator should step now."""
        self.since.assign_add(1)
        if int(self.since) >= int(self.n):
            self.since.assign(0)
            return True
        return False

    def update(self, fake_scores) -> float:
        """After a generator step: the critic's accuracy on fresh fakes, and maybe double n."""
        accuracy = float(tf.reduce_mean(tf.cast(fake_scores < 0.0, tf.float32)))
        if self.adaptive and accuracy < self.target and int(self.n) < self.max_n:
            self.n.assign(min(2 * int(self.n), self.max_n))
        return accuracy
