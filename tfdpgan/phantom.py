"""Write a phantom TOF-MRA data set (nnU-Net style folder) to disk.

  python -m tfdpgan.phantom --out_dir=DIR --num_patients=20 --num_test=4 --seed=0 [--preset=default]

writes ``DIR/{images,labels,masks}{Tr,Ts}/phantom_NNN.nii.gz`` and ``DIR/dataset.json``.
``--preset`` picks a scanner/site protocol (default, site_b, small); ``--shape`` alone re-grids
the preset's field of view (the spacing follows), ``--spacing`` alone keeps the preset's
shape, both together set the grid exactly.
"""
import dataclasses
import os

from absl import flags

from tfdpgan import cli, errors
from tfdpgan.data import phantom

FLAGS = flags.FLAGS


def define_flags(fv=FLAGS):
    fdef = cli.FlagDefiner(fv)
    fdef.DEFINE_string("out_dir", None, "Dataset folder to create (must not exist unless "
                       "--overwrite).", required=True)
    fdef.DEFINE_integer("num_patients", 20, "Number of training patients (imagesTr).",
                        lower_bound=1)
    fdef.DEFINE_integer("num_test", 4, "Number of held-out test patients (imagesTs).",
                        lower_bound=0)
    fdef.DEFINE_integer("seed", 0, "Dataset seed; each patient's volume seed derives from it.",
                        lower_bound=0)
    fdef.DEFINE_enum("preset", "default", sorted(phantom.PRESETS),
                     "Scanner/site protocol: default (3 T), site_b (a shifted 1.5 T site), "
                     "small (coarse grid for tests).")
    fdef.DEFINE_list("shape", None, "Volume shape in voxels x,y,z (z = axial slices), each "
                     ">= 8 (default: the preset's; alone it keeps the preset's field of view).")
    fdef.DEFINE_list("spacing", None, "Voxel spacing in mm x,y,z (default: the preset's).")
    fdef.DEFINE_integer("workers", None, "Worker processes (default: one per core for "
                        "full-size volumes); the output does not depend on it.", lower_bound=1)
    fdef.DEFINE_boolean("overwrite", False, "Replace an existing --out_dir.")
    fdef.register_validator("shape", lambda v: _check_triple("shape", int, v))
    fdef.register_validator("spacing", lambda v: _check_triple("spacing", float, v))


def _triple(values, kind: type) -> tuple:
    parsed = tuple(kind(v) for v in values)
    if len(parsed) != 3:
        raise ValueError(f"expected three values, got {len(parsed)}")
    return parsed


def _check_triple(name: str, kind: type, values) -> bool:
    if values is None:
        return True
    try:
        triple = _triple(values, kind)
        if name == "shape":
            phantom.with_shape(phantom.PhantomConfig(), triple)
        else:
            phantom.PhantomConfig(spacing=triple)
    except (TypeError, ValueError) as e:
        raise flags.ValidationError(
            f"--{name} must be three comma-separated {kind.__name__}s x,y,z: {e}") from e
    return True


def config_from_flags(fv=FLAGS) -> phantom.PhantomConfig:
    """The preset, re-gridded by --shape and/or --spacing."""
    config = phantom.preset(fv.preset)
    if fv.shape is not None and fv.spacing is None:
        return phantom.with_shape(config, _triple(fv.shape, int))
    changes = {}
    if fv.shape is not None:
        changes["shape"] = _triple(fv.shape, int)
    if fv.spacing is not None:
        changes["spacing"] = _triple(fv.spacing, float)
    return dataclasses.replace(config, **changes)


def main(argv):
    if len(argv) > 1:
        raise errors.SettingsError(f"unexpected arguments: {' '.join(argv[1:])}")
    ids = phantom.write_dataset(FLAGS.out_dir, FLAGS.num_patients, FLAGS.num_test, FLAGS.seed,
                                config_from_flags(), overwrite=FLAGS.overwrite,
                                workers=FLAGS.workers, preset=FLAGS.preset)
    print(f"wrote {len(ids['train'])} training and {len(ids['test'])} test phantoms "
          f"to {os.path.abspath(FLAGS.out_dir)}")


def cli_main():
    cli.run(main, define_flags)


if __name__ == "__main__":
    cli_main()
