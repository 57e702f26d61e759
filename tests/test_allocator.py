"""The allocator setting of `adagen`'s processes: repeated forward passes reuse freed memory.

Each case runs in a process of its own, since the setting lasts for the process. Page faults, not times, are
what is compared: they do not depend on how busy the machine is.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")

# Four forward passes of an MLP on a batch whose activations (66 MB) are over glibc's largest mmap threshold, as
# in sampling a batch of 250 with CFG: the minor page faults they take. By default each pass maps its buffers
# afresh and faults every page in; with freed memory kept, most buffers reuse pages of the passes before.
FORWARD_PASS_FAULTS = """
import json, resource, sys
import torch
from adagen.allocator import keep_freed_memory
taken = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.GELU(), torch.nn.Linear(512, 128))
tokens = torch.randn(500 * 65, 128)
with torch.no_grad():
    mlp(tokens)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        mlp(tokens)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "taken": taken}))
"""


def forward_pass_faults(mode: str) -> dict:
    output = subprocess.run([sys.executable, "-c", FORWARD_PASS_FAULTS, mode], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output)


def test_kept_memory_saves_most_of_the_page_faults_of_repeated_forward_passes():
    kept, default = forward_pass_faults("keep"), forward_pass_faults("default")
    assert kept["taken"] is True
    activation_pages = 4 * (500 * 65 * 512 * 4) // 4096
    assert default["faults"] > 2 * activation_pages  # every pass faults its buffers in again
    assert kept["faults"] < default["faults"] / 2


def test_the_adagen_command_starts_with_it():
    from importlib.metadata import entry_points

    from adagen import cli

    assert entry_points(group="console_scripts")["adagen"].load() is cli.run
