"""`.ci/run` must run the README's test command (the configuration reference is
checked in tests/common/test_run_config.py)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "```bash\nmake test\n```" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
