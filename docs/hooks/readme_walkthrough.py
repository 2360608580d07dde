"""MkDocs hook: ``<!-- raypipe:readme-walkthrough -->`` in a page becomes the README's walkthrough
block (the ```bash block after ``<!-- walkthrough -->``), copied at build time.

``tests/e2e/test_readme_walkthrough.py`` runs that block line by line, so the README keeps the
one copy and the site shows it as it is.  A README without the block fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^<!--\s*raypipe:readme-walkthrough\s*-->\s*$", re.M)
# the same pattern the walkthrough test reads the block with
BLOCK = re.compile(r"<!-- walkthrough -->\s*```bash\n(.*?)\n```", re.S)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if not MARKER.search(markdown):
        return markdown
    readme = Path(config.config_file_path).resolve().parent / "README.md"
    m = BLOCK.search(readme.read_text(encoding="utf-8"))
    if m is None:
        raise PluginError(f"docs/hooks/readme_walkthrough.py: {readme} has no <!-- walkthrough --> ```bash block")
    return MARKER.sub(lambda _: "```bash\n" + m.group(1) + "\n```", markdown)
