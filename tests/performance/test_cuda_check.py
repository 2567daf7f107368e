"""lightdist.cuda_check: on a machine without CUDA devices the NVML-based check Lightning asks for
(on every torch.cuda.is_available(), which torch.optim calls at every step) is dropped; where a
device exists it stays, so that nothing initialises CUDA before ranks or workers are forked."""

import os

import pytest
import torch

from lightdist import cuda_check


def asks_nvml() -> None:
    raise AssertionError("torch.cuda.is_available() asked NVML (torch.cuda.device_count)")


def test_no_device_drops_the_nvml_check(monkeypatch):
    monkeypatch.setenv(cuda_check.NVML_CHECK, "1")
    with monkeypatch.context() as patched:
        patched.setattr(torch.cuda, "device_count", lambda: 0)
        cuda_check.answer_cuda_checks_once()
    assert cuda_check.NVML_CHECK not in os.environ
    # from now on torch answers from the runtime's count, which it keeps, without asking NVML
    monkeypatch.setattr(torch.cuda, "device_count", asks_nvml)
    torch.cuda.is_available()


def test_with_the_nvml_check_every_answer_asks_nvml(monkeypatch):
    """What the test above relies on: torch's is_available under Lightning's variable."""
    if not torch.backends.cuda.is_built():
        pytest.skip("a torch build without CUDA answers without NVML")
    monkeypatch.setenv(cuda_check.NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "device_count", asks_nvml)
    with pytest.raises(AssertionError, match="asked NVML"):
        torch.cuda.is_available()


def test_a_device_keeps_the_nvml_check(monkeypatch):
    monkeypatch.setenv(cuda_check.NVML_CHECK, "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    cuda_check.answer_cuda_checks_once()
    assert os.environ[cuda_check.NVML_CHECK] == "1"
