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
