import platform
import subprocess
import sys

import pytest

from geosr.runtime import limit_malloc_arenas


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_arenas_can_be_capped_in_a_fresh_process():
    # in a child process, so the test session's own allocator settings are left alone
    code = "from geosr.runtime import limit_malloc_arenas as f; import sys; sys.exit(0 if f(2) else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_no_effect_on_import():
    import importlib

    import geosr.runtime

    importlib.reload(geosr.runtime)  # importing changes nothing: the call is explicit
    assert callable(limit_malloc_arenas)
