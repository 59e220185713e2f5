"""VAE_EXECUTION_PROVIDER: cpu always; cuda only where onnxruntime has its CUDA provider (onnxruntime-gpu), else
a model fails to load with a message saying what to install. (The GPU path itself is checked only on a machine
with a GPU: this suite runs on CPU.)"""

import onnxruntime as ort
import pytest

from model.core.artifact import ModelLoadError, load_model_dir, providers
from tests.conftest import REPO

MODEL = REPO / "artifacts" / "fashion-mnist-vae" / "3.1.0"


def test_cpu_is_onnxruntimes_cpu_provider():
    assert providers("cpu") == ["CPUExecutionProvider"]


def test_an_unknown_provider_is_refused_naming_the_choices():
    with pytest.raises(ModelLoadError, match="choose one of cpu, cuda"):
        providers("tpu")


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this onnxruntime has CUDA")
def test_cuda_without_onnxruntime_gpu_refuses_to_load_saying_what_to_install():
    with pytest.raises(ModelLoadError, match="install onnxruntime-gpu for CUDA, or use cpu"):
        load_model_dir(MODEL, provider="cuda")


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider here")
def test_cuda_puts_the_graphs_on_the_gpu():
    model = load_model_dir(MODEL, provider="cuda")
    assert model.encoder.get_providers()[0] == "CUDAExecutionProvider"
