"""ruff (pinned in requirements.txt, configured in pyproject.toml) finds nothing in helpers/, tests/ and bench/:
pyflakes and pycodestyle errors, import order, and McCabe complexity at most 12 per function."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing():
    try:
        import ruff  # noqa: F401  (installed from requirements.txt)
    except ImportError:
        raise AssertionError("ruff is not installed: pip install -r requirements.txt") from None
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "helpers", "tests", "bench"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, f"ruff check failed; fix these (or run ruff check --fix):\n{run.stdout}{run.stderr}"


def test_complexity_limit_is_configured():
    text = (ROOT / "pyproject.toml").read_text()
    assert "max-complexity = 12" in text and '"C90"' in text


def test_integer_arguments_are_checked_in_one_place():
    # helpers._validate.check_count is the one integer check (it accepts numpy integers, rejects bools)
    import re

    pattern = re.compile(r"isinstance\(\w+, int\)|isinstance\(\w+, \(int, np\.integer\)\)")
    hits = [f"{p.name}:{i}" for p in sorted((ROOT / "helpers").glob("*.py")) if p.name != "_validate.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, f"integer checks re-coded outside helpers/_validate.py (use check_count): {hits}"
