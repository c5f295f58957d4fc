"""Print the N-th fenced code block of README.md's "Quick start" section (1: main job, 2: tests)."""

import re
import sys
from pathlib import Path

readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
section = re.search(r"^## Quick start\s*$(.*?)(?=^## |\Z)", readme, flags=re.MULTILINE | re.DOTALL)
if section is None:
    sys.exit("README.md has no '## Quick start' section")
blocks = re.findall(r"^```[a-z]*\n(.*?)^```", section.group(1), flags=re.MULTILINE | re.DOTALL)
index = int(sys.argv[1])
if len(blocks) < index:
    sys.exit(f"README.md's Quick start has {len(blocks)} code blocks; block {index} is missing")
lines = [line.strip() for line in blocks[index - 1].splitlines() if line.strip() and not line.strip().startswith("#")]
print(" ".join(line.rstrip("\\").strip() for line in lines))
