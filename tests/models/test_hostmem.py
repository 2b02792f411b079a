"""models.hostmem: glibc's thresholds are raised once per process, and a large tensor made again after
being freed comes to reuse freed memory (the minor page faults of making it fall to zero), where
without it every one is fresh pages."""
from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest


def _child(env_value: str) -> dict:
    code = textwrap.dedent("""
        import json, resource, torch
        from difflens.models.hostmem import reuse_freed_memory
        ok = reuse_freed_memory()
        again = reuse_freed_memory()
        x = torch.randn(200, 49152)  # 39 MB: above glibc's 32 MiB dynamic mmap ceiling
        faults = []
        for _ in range(20):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            y = torch.softmax(x, -1)
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            del y
        print(json.dumps({"ok": ok, "again": again, "faults": faults}))
    """)
    import json
    import os
    env = {**os.environ, "DIFFLENS_MALLOC": env_value}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_large_tensors_reuse_freed_memory_instead_of_fresh_pages():
    on = _child("1")
    if not on["ok"]:
        pytest.skip("not glibc: reuse_freed_memory does nothing here")
    assert on["again"] is True
    pages = 200 * 49152 * 4 // resource.getpagesize()
    off = _child("0")
    assert off["ok"] is False
    # without it every softmax output is fresh pages; with it they come to reuse the freed block
    assert min(off["faults"][1:]) > pages // 2, off
    assert sum(on["faults"]) < 0.6 * sum(off["faults"]), (on, off)
    assert sum(on["faults"][-5:]) < pages // 10, on
