"""Data stage: NIH label reading, image decoding, the HDF5 training cache and phantom data."""
