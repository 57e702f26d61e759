"""The allocator setting of `adagen`'s processes: a large buffer freed and allocated again faults no page in.

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

# Allocate a 64 MiB tensor (over glibc's largest mmap threshold) and touch it, free it, then do the same again:
# the second round's minor page faults tell whether the freed memory was kept for it. (A torch tensor, as the
# stages' buffers are: numpy asks the kernel for huge pages, which hides the difference.)
SECOND_ROUND_FAULTS = """
import json, resource, sys
import torch
from adagen.allocator import keep_freed_memory
settings_taken = keep_freed_memory() if sys.argv[1] == "keep" else None
buffer = torch.ones(8 << 20, dtype=torch.float64)
del buffer
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
buffer = torch.ones(8 << 20, dtype=torch.float64)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "taken": settings_taken}))
"""
PAGES = (64 << 20) // 4096


def second_round(mode: str) -> dict:
    output = subprocess.run([sys.executable, "-c", SECOND_ROUND_FAULTS, mode], check=True, capture_output=True,
                            text=True).stdout
    return json.loads(output)


def test_kept_memory_serves_the_next_buffer_without_faulting_its_pages_in_again():
    kept = second_round("keep")
    assert kept["taken"] is True
    assert kept["faults"] < PAGES // 20
    assert second_round("default")["faults"] > PAGES // 2  # glibc's default maps the buffer afresh


def test_the_adagen_command_starts_with_it():
    from importlib.metadata import entry_points

    from adagen import cli

    assert entry_points(group="console_scripts")["adagen"].load() is cli.run
