"""Training side of vae-service: configs, data, the VAE, its loss, and the CLIs, over `model.core`.

Importing this package must stay cheap and torch-free: the service imports `model.core`
(numpy, Pillow, pydantic and onnxruntime only). Torch is imported by the submodules that need
it (`model.vae`, `model.losses`, `model.trainer`, ...). The package's version is pyproject.toml's.
"""
