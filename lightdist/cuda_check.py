"""Whether CUDA is available, answered once on a machine without CUDA devices.

Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when it is imported, so that asking whether CUDA is
available never initialises it (a process that forks ranks or loader workers must not have). torch
then asks NVML on every torch.cuda.is_available(), and caches the answer only once CUDA is
initialised, which on a machine without a GPU never happens: ~33 us a call, and torch.optim asks
at every optimizer step (~80 us a step on a CPU, ~0.4% of a small model's step; a plain script
that does not import Lightning never pays it). Where NVML finds no device there is no CUDA to
initialise: the variable is dropped, and torch answers from the CUDA runtime's count, which it keeps.
"""

import os

import torch

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def answer_cuda_checks_once() -> None:
    if os.environ.get(NVML_CHECK) == "1" and torch.cuda.device_count() == 0:
        del os.environ[NVML_CHECK]
