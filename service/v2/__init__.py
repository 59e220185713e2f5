"""The open inference protocol (KServe v2 / Triton): codec, models, routes."""
