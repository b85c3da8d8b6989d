"""bksdm-edge: compress, distil, export and benchmark Stable Diffusion U-Nets the BK-SDM way."""

__version__ = "0.1.0"
