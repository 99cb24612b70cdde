"""The README's Python example runs and prints what the README says it prints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from sds_plugins.sandbox import Sandbox

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example(sandbox: Sandbox) -> None:
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    output = re.search(r"this prints:\n\n```text\n(.*?)```", text, re.S)
    assert code is not None and output is not None
    program = code.group(1).replace(
        "http://127.0.0.1:9000/spine-directory/FHIR/R4", sandbox.base_url
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert result.stdout == output.group(1)
