"""geosr: seamless, resumable latent-diffusion super-resolution of satellite imagery to georeferenced Zarr."""

__version__ = "0.1.0"
