"""Component tests run torch on one thread: the tiny models gain nothing from more, and the CI
machine's 2 cores are shared with the distributed tests' subprocesses (oversubscription makes
them many times slower). Set at import, so it holds for every test of this folder."""

import torch

torch.set_num_threads(1)
