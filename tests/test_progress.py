"""Progress bars: shown when asked, hidden when not, and TQDM_DISABLE still wins (read by tqdm at import)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_SCRIPT = (
    "import sys\n"
    "from tqdm.auto import tqdm\n"
    "from ternary_hf.utils.progress import bar_switch\n"
    "for _ in tqdm(range(3), desc='probe', file=sys.stderr, **bar_switch(sys.argv[1] == 'show')): pass\n"
)


def _stderr(show: str, tqdm_disable: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    if tqdm_disable is not None:
        env["TQDM_DISABLE"] = tqdm_disable
    return subprocess.run([sys.executable, "-c", _SCRIPT, show], env=env, capture_output=True, text=True,
                          check=True, timeout=120).stderr


@pytest.mark.parametrize(("show", "env", "visible"), [("show", None, True), ("hide", None, False),
                                                       ("show", "1", False), ("hide", "1", False)])
def test_bar_switch_honours_tqdm_disable(show, env, visible):
    assert ("probe" in _stderr(show, env)) is visible
