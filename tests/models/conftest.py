import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run model tests on one intra-op thread (both engines alike, so results stay comparable).

    These models are small: a second OpenMP thread buys little, and on a busy 2-core CI machine every op then waits
    for a descheduled thread (measured under load: layer_norm of 16x64 15 us -> 4 ms; SmolLM2 5x32 greedy tokens
    9.6 s -> 48 s).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAGEDLLM_CPU_THREADS", "1")    # engines set their own count at start (config._pick_cpu_threads)
        yield
    torch.set_num_threads(old)
