"""How much of a generator's FID is noise texture, and how much structure (issue #11).

  python benchmarks/fid_texture.py                                   # built-in prior
  python benchmarks/fid_texture.py --generators=builtin,runs/prior_fid_rician/run

FID is measured as in benchmarks/prior_fid.py: --fid_samples patches against as many real
training patches of the utility benchmark's private site (a 1000-sample proxy, not the test-
volume FID). Beside the generators it scores real patches degraded in known ways, which puts
a generator's numbers on a scale: real patches plus Gaussian noise of SD s (more high-frequency
texture than the scanner's) and real patches blurred by a Gaussian of σ px (less). For every
set it prints FID, the high-frequency residual SD (patch minus its σ = 1 px blur), the mean
and SD of the image intensities and the label fraction. Reading: if a generator's FID is far
above that of real patches with the same residual SD, its structure, not its texture, is what
FID sees. --real_sites scores real patches of other phantom sites the same way: the FID a
perfect generator of that site would score, i.e. how much of a public prior's FID is the gap
between its site and the private one. Nothing here is private: every patch is phantom data.
"""
import os
import shlex
import sys

import numpy as np
import scipy.ndimage as ndi
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tfdpgan import atomic  # noqa: E402
from tfdpgan.data import default_data, phantom  # noqa: E402
from tfdpgan.evaluation import inputs  # noqa: E402
from tfdpgan.evaluation.fid import distance, network as fid_network  # noqa: E402
from tfdpgan.gan import priors, sample  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_list("generators", ["builtin"], "Generators to score: 'builtin' or run workdirs "
                  "(their exported generator).")
flags.DEFINE_list("noise_sds", ["0.03", "0.05", "0.075", "0.1"], "Gaussian noise SDs added "
                  "to real patches (normalised units).")
flags.DEFINE_list("blur_sigmas", ["0.7", "1.5"], "Gaussian blurs of real patches (px).")
flags.DEFINE_list("real_sites", [], "Real patches of other phantom sites, PRESET:SEED (e.g. "
                  "site_b:1000, the built-in prior's public data): the FID a prior trained on "
                  "that site would have if it were perfect.")
flags.DEFINE_string("reference_site", None, "PRESET:SEED of the reference (and floor) set "
                    "instead of the private site, e.g. site_b:1000 to score the built-in prior "
                    "against its own public data.")
flags.DEFINE_integer("patch_size", 32, "Patch size of the private site (the demo's).")
flags.DEFINE_integer("fid_samples", 1000, "Images per FID set.")
flags.DEFINE_string("output", os.path.join(ROOT, "benchmarks", "results", "fid_texture.txt"),
                    "Table.")
FLAGS = flags.FLAGS


def high_frequency_sd(images) -> float:
    """SD of each patch minus its Gaussian blur (σ = 1 px): the texture's strength."""
    images = np.asarray(images, np.float32)
    return float(np.std(images - ndi.gaussian_filter(images, (0, 1, 1))))


def _site_patches(site, count: int):
    """``count`` training patches of a phantom site in a fixed random order; its records dir."""
    rec_dir = default_data.prepare(site)[1]
    return (*inputs.real_sample(rec_dir, site.patch_size, count), rec_dir)


def _other_site(spec: str):
    """PRESET:SEED -> the phantom data config (the patch size of the private site)."""
    preset, _, seed = spec.partition(":")
    if preset not in phantom.PRESETS or not seed.isdigit():
        raise app.UsageError(f"{spec!r} is not PRESET:SEED with PRESET one of "
                             f"{sorted(phantom.PRESETS)}")
    return default_data.PhantomDataConfig(seed=int(seed), preset=preset,
                                          patch_size=FLAGS.patch_size)


def main(argv):
    del argv
    n = FLAGS.fid_samples
    sites = [_other_site(spec) for spec in FLAGS.real_sites]   # bad flags fail before work
    reference_site = (_other_site(FLAGS.reference_site) if FLAGS.reference_site else
                      default_data.benchmark_private_site(patch_size=FLAGS.patch_size))
    images, labels, rec_dir = _site_patches(reference_site, 2 * n)
    reference, real = images[:n], images[n:]
    net = fid_network.load_network()
    act_reference = distance.activations(net, distance.to_inception_range(reference))
    rows = []

    def score(name, imgs, labs):
        act = distance.activations(net, distance.to_inception_range(imgs))
        row = (name, distance.frechet_distance(act, act_reference), high_frequency_sd(imgs),
               float(np.mean(imgs)), float(np.std(imgs)), float(np.mean(labs > 0)))
        rows.append(row)
        print(f"{row[0]}: FID {row[1]:.1f}", flush=True)

    score("real (floor)", real, labels[n:])
    rng = np.random.default_rng(1)
    for sd in map(float, FLAGS.noise_sds):
        noisy = np.clip(real + rng.normal(0, sd, real.shape), -1, 1).astype(np.float32)
        score(f"real + noise SD {sd:g}", noisy, labels[n:])
    for sigma in map(float, FLAGS.blur_sigmas):
        score(f"real blurred {sigma:g} px", ndi.gaussian_filter(real, (0, sigma, sigma)),
              labels[n:])
    for spec, site in zip(FLAGS.real_sites, sites):
        other, other_labels, _ = _site_patches(site, n)
        score(f"real site {spec}", other, other_labels)
    for source in FLAGS.generators:
        fn, latent_dim, patch = priors.sampler(source)
        if patch != FLAGS.patch_size:
            raise app.UsageError(f"{source}: {patch}x{patch} patches, not {FLAGS.patch_size}")
        fake, fake_labels = sample.generate(fn, latent_dim, n, seed=0)
        score(f"generator {source}", fake, fake_labels)

    command = " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [f"# python benchmarks/fid_texture.py {command}".rstrip(),
             f"# FID of {n} patches vs {n} real training patches of "
             f"{FLAGS.reference_site or 'the private site'} "
             f"({os.path.basename(os.path.dirname(rec_dir))}); hf = SD of patch minus its "
             f"1 px blur",
             f"{'set':44s} {'FID':>6s} {'hf':>6s} {'mean':>7s} {'SD':>6s} {'label':>6s}"]
    lines += [f"{r[0]:44s} {r[1]:6.1f} {r[2]:6.3f} {r[3]:7.3f} {r[4]:6.3f} {r[5]:6.3f}"
              for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    atomic.write_text_atomic(FLAGS.output, text)


if __name__ == "__main__":
    app.run(main)
