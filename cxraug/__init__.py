"""cxraug: conditional-GAN augmentation for chest X-ray data sets in NIH ChestX-ray14 format."""

__version__ = "0.1.0"
