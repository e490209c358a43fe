"""`keel serve` does not import the MCP SDK at start: /mcp is built at its first request."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SDK = ("mcp", "mcp_types", "tools.mcp_server")


def test_create_app_leaves_the_mcp_sdk_unimported():
    code = (
        "import sys\nfrom server.app import create_app\ncreate_app()\n"
        f"print(','.join(m for m in {SDK!r} if m in sys.modules) or 'none')"
    )
    env = os.environ | {"PYTHONPATH": str(ROOT), "KEEL_API_KEYS": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "none"
