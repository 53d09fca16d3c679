"""tfdpgan: a Wasserstein GAN with a differentially private critic for
labelled brain TOF-MRA patches (image + vessel segmentation label).

See README.md for the quick start and ../shared/DESIGN.md for the data flow.
"""
__version__ = "0.1.0"
