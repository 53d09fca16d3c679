"""Devices and tf.distribute strategies for training, and the replica split of one DP batch.

Strategies (``--strategy``): ``default`` (one device), ``mirrored``
(tf.distribute.MirroredStrategy over the local GPUs, or over ``--cpu_devices`` logical CPU
devices), ``multi_worker`` (tf.distribute.MultiWorkerMirroredStrategy across machines; the
cluster comes from the ``TF_CONFIG`` environment variable, as TensorFlow documents it).

How one private critic step is distributed (tfdpgan.gan.wgan, tfdpgan.dp.step):
  * every worker draws the SAME global Poisson sample from (secret seed, step): the seed is
    the chief's, shared through a collective (``share_from_first_replica``), never written
    anywhere public;
  * the global batch is padded with weight-0 records to m * R * chunk records
    (``pad_global_batch``; chunk fixed from the expected batch, m >= 1 almost always 1), so
    each of the R replicas takes a fixed-size, record-aligned slice (``replica_slice``);
    weight-0 rows have a zero loss, so a zero gradient and a zero contribution;
  * each replica computes the clipped per-record sum of its slice; only replica 0 adds the
    Gaussian noise N(0, (σC)^2); an all-reduce SUM gives every replica the same
    (sum of all clipped records + ONE noise draw), divided by the global expected batch.
So the sampling rate, the sensitivity C and the noise std σC are those of one device: the
privacy card does not depend on the strategy.
"""
import json
import math
import os
import socket

import tensorflow as tf

from tfdpgan import errors

__all__ = ["STRATEGIES", "split_cpu", "make_strategy", "is_chief",
           "chunk_records", "pad_global_batch", "replica_slice", "replicated",
           "is_first_replica", "apply_summed", "share_from_first_replica",
           "local_cluster"]

STRATEGIES = ("default", "mirrored", "multi_worker")
_MADE = {}   # one strategy of each kind per process (two would share collective keys)


def split_cpu(n: int):
    """Split the first CPU into ``n`` logical devices (n >= 2), so MirroredStrategy can run on
    a CPU-only machine. Must run before TensorFlow initialises its devices."""
    if n < 2:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) != n:
            raise errors.SettingsError(
                f"--cpu_devices={n}: TensorFlow's devices were already initialised with "
                f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s); set it before "
                f"anything else runs") from None


def make_strategy(name: str, cpu_devices: int = 0) -> tf.distribute.Strategy:
    """The strategy ``name``. ``mirrored`` uses all local GPUs, else (no GPU) all logical CPU
    devices (``cpu_devices`` >= 2 splits the CPU first). ``multi_worker`` reads TF_CONFIG
    and must be made before any other TensorFlow op of the process."""
    if name not in STRATEGIES:
        raise errors.SettingsError(f"strategy must be one of {STRATEGIES}, got {name!r}")
    if name == "multi_worker":
        _check_tf_config()
    split_cpu(cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name not in _MADE:
        _MADE[name] = _new_strategy(name)
    return _MADE[name]


def _new_strategy(name):
    if name == "multi_worker":   # first: collective ops are configured before any op runs
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=tf.distribute.experimental.CommunicationImplementation.AUTO))
    devices = None
    if not tf.config.list_logical_devices("GPU"):
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def _check_tf_config():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise errors.SettingsError(
            "--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
            "TF_CONFIG='{\"cluster\": {\"worker\": [\"host1:12345\", \"host2:12345\"]}, "
            "\"task\": {\"type\": \"worker\", \"index\": 0}}' on host1 (index 1 on host2)")
    try:
        spec = json.loads(raw)
        workers, task = spec["cluster"]["worker"], spec["task"]
        if task["type"] not in ("worker", "chief") or not workers:
            raise ValueError("task type must be worker or chief")
    except (ValueError, KeyError, TypeError) as e:
        raise errors.SettingsError(f"TF_CONFIG is not a valid cluster spec ({e}): {raw}") \
            from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the process that writes the run's files: the only one, or, under
    MultiWorkerMirroredStrategy, the chief (or worker 0 when no chief is named)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def chunk_records(expected_records: float, replicas: int) -> int:
    """Records per replica per round: the expected share plus 3 standard deviations of the
    Poisson batch size, so a step almost always fits one round. Data-independent."""
    e = float(expected_records)
    return max(1, int(math.ceil((e + 3.0 * math.sqrt(e) + 1.0) / replicas)))


def pad_global_batch(pairs, weight, replicas: int, chunk: int, group_size: int = 1):
    """Pad the global batch (rows of ``group_size``-row records) with weight-0 zero records to
    m * replicas * chunk records, m = max(1, ceil(records / (replicas * chunk))): fixed
    shapes per replica whatever the realised Poisson size (nothing retraces or recompiles)."""
    rows = tf.shape(pairs)[0]
    block = replicas * chunk * group_size
    target = tf.maximum(1, (rows + block - 1) // block) * block
    pad = target - rows
    pairs = tf.concat([pairs, tf.zeros(tf.concat([[pad], tf.shape(pairs)[1:]], 0),
                                       pairs.dtype)], 0)
    weight = tf.concat([weight, tf.zeros([pad], weight.dtype)], 0)
    return pairs, weight


def replica_slice(tensor):
    """This replica's contiguous share of a global batch padded by pad_global_batch (in the
    default strategy: all of it)."""
    ctx = tf.distribute.get_replica_context()
    n = tf.shape(tensor)[0] // ctx.num_replicas_in_sync
    start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * n
    return tensor[start:start + n]


def replicated(strategy: tf.distribute.Strategy, fn):
    """A tf.function ``run(*global_tensors)`` that calls ``fn(*slices)`` on every replica with
    its replica_slice of each (padded) global tensor; returns the per-replica results."""
    @tf.function
    def run(*tensors):
        return strategy.run(lambda *t: fn(*[replica_slice(x) for x in t]), args=tensors)
    return run


def is_first_replica():
    """Scalar bool: this is replica 0 (True in the default strategy)."""
    ctx = tf.distribute.get_replica_context()
    return tf.equal(tf.cast(ctx.replica_id_in_sync_group, tf.int32), 0)


def apply_summed(optimizer, grads, variables):
    """In a replica context: all-reduce (SUM) ``grads`` across the replicas and apply the
    result on every replica (no further aggregation by the optimizer), so all replicas make
    the identical update; one replica: apply ``grads``. Returns the applied gradients."""
    ctx = tf.distribute.get_replica_context()
    if ctx.num_replicas_in_sync > 1:
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        optimizer.apply_gradients(zip(grads, variables), experimental_aggregate_gradients=False)
    else:
        optimizer.apply_gradients(zip(grads, variables))
    return grads


def local_cluster(workers: int = 2) -> list:
    """TF_CONFIG values (JSON strings) for ``workers`` worker processes on 127.0.0.1, one per
    worker index, on ports free at the time of the call (for tests and benchmarks)."""
    socks = [socket.socket() for _ in range(workers)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    cluster = {"worker": [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]}
    for s in socks:
        s.close()
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            for i in range(workers)]


def share_from_first_replica(strategy: tf.distribute.Strategy, value: int) -> int:
    """Replica 0's ``value`` (an int64) on every worker, through an all-reduce in which the
    other replicas contribute 0: how the chief's secret sampling seed reaches the workers
    without being written to a file."""
    if strategy.num_replicas_in_sync == 1:
        return int(value)
    local = tf.constant(int(value), tf.int64)

    @tf.function
    def share():
        def contribute():
            ctx = tf.distribute.get_replica_context()
            mine = tf.where(is_first_replica(), local, tf.zeros([], tf.int64))
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, mine)
        return strategy.experimental_local_results(strategy.run(contribute))[0]

    return int(share().numpy())
