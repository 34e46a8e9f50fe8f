"""The README's configuration reference must list exactly the app's config keys,
with the defaults pyproject.toml sets; .ci/run must run the README's test command."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([a-z0-9.-]+)` \| `([^`]*)` \|", section, re.M))


def test_readme_config_reference_matches_pyproject(default_run_config) -> None:
    table = _readme_table()
    assert set(table) == set(default_run_config)
    for key, value in default_run_config.items():
        shown = table[key]
        if isinstance(value, bool):
            assert shown == str(value).lower(), key
        elif isinstance(value, str):
            assert shown == f'"{value}"', key
        else:
            assert float(shown) == float(value), key


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```bash\nmake test\n```" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
