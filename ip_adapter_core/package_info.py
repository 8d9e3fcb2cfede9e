"""The extension's version, read from pyproject.toml: the one place it is written (the registry reads it there)."""
from __future__ import annotations

import functools
import re
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


@functools.lru_cache(maxsize=1)
def version() -> str:
    """[project].version of pyproject.toml ("unknown" when the file is missing, e.g. a partial copy)."""
    try:
        text = PYPROJECT.read_text(encoding="utf-8")
    except OSError:
        return "unknown"
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # 3.10: the one line is enough
        m = re.search(r'(?m)^version\s*=\s*"([^"]+)"', text.split("[project]", 1)[-1])
        return m.group(1) if m else "unknown"
    return str(tomllib.loads(text).get("project", {}).get("version", "unknown"))
