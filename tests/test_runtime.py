import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_malloc_arenas_can_be_capped_in_a_fresh_process():
    # in a child process, so the test session's own allocator settings are left alone
    code = "from geosr.runtime import limit_malloc_arenas as f; import sys; sys.exit(0 if f(2) else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

