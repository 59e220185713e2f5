"""The torch-free core that training, export and the service stand on: the preprocessing contract,
the likelihoods' numpy side, scoring, and the artifact format (manifest) and its reader.

It imports nothing from the rest of `model`, from `export` or from `service`, and never torch
(tests/unit/test_layering.py checks it).
"""
