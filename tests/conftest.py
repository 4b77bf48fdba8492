"""Suite-wide settings.

Torch runs on one intra-op thread: the tests use small tensors, for which thread
synchronisation costs more than it saves, and on a shared 2-core machine an
operation can wait milliseconds for a descheduled thread (seen: a softmax of 6x3
at 8 ms; the Monte-Carlo tests ran 10x slower). Results do not depend on it.
"""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
