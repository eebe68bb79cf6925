"""The README's two commands are the project's contract: check they say what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


def test_readme_opens_with_two_commands():
    text = (ROOT / "README.md").read_text()
    assert text.index("```sh") < 40, "the two commands must come first"
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("shiftlab demo")
    assert commands[1].endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in [line.strip() for line in ci]


def test_install_script_is_there():
    assert (ROOT / "scripts" / "install-chromium.sh").is_file()


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = text.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.summary()[0]["layer"] == "conv1"
    # mode="auto" sees resnet18's zero padding: crop shifts, and conv1 exact at the even shifts (3 of 7), as the
    # README's example output says
    assert result.protocol["mode"] == "crop"
    assert result.protocol["mode_reason"].startswith("auto: 17 layers pad with zeros (conv1, ")
    assert result.summary()[0]["exact_shifts"] == 3
    assert (tmp_path / "probe.csv").exists()


def test_every_import_and_dotted_name_in_the_readme_resolves():
    """The README names modules and objects for the reader to import: each must exist where it says (a layout change
    that moves one must move the text)."""
    import importlib
    import re

    text = (ROOT / "README.md").read_text()
    missing = []
    for match in re.finditer(r"^\s*from (shiftlab[\w.]*) import ([\w, ]+)", text, re.MULTILINE):
        try:
            module = importlib.import_module(match.group(1))
            missing += [f"{match.group(1)}.{name.strip()}" for name in match.group(2).split(",")
                        if not hasattr(module, name.strip())]  # fmt: skip
        except ImportError:
            missing.append(match.group(0).strip())
    for dotted in sorted(set(re.findall(r"`(shiftlab(?:\.\w+)+)", text))):
        parts = dotted.split(".")
        for split in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                found: object = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            for part in parts[split:]:
                found = getattr(found, part, None)
            if found is None:
                missing.append(dotted)
            break
    assert not missing, missing
