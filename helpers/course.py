"""The course's two entry points, runnable with any Python 3.11+ before anything is installed:

    python3 -m helpers.course lab     # set up if needed, then open the course in JupyterLab
    python3 -m helpers.course test    # set up if needed, then run every test and notebook (fast mode)
    python3 -m helpers.course render  # execute every notebook in full mode, write HTML to build/html/

"Set up" means: create the virtual environment ``.venv`` (or ``$COURSE_VENV``)
next to this repository when it is missing, and ``pip install -r
requirements.txt`` into it when requirements.txt or pyproject.toml changed
since the last install (a hash stamp inside the environment records it).
Extra arguments go to JupyterLab or pytest, e.g. ``test -k rbm -x``.

This module uses only the standard library on purpose.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAMP = ".course-requirements.sha256"


def venv_dir() -> Path:
    return Path(os.environ.get("COURSE_VENV", ROOT / ".venv")).resolve()


def venv_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _requirements_hash() -> str:
    h = hashlib.sha256()
    for name in ("requirements.txt", "pyproject.toml"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def ensure_environment() -> Path:
    """Create and fill the virtual environment if needed; return its python."""
    env = venv_dir()
    python = venv_python(env)
    if not python.exists():
        print(f"[course] creating the virtual environment {env}", flush=True)
        venv.EnvBuilder(with_pip=True).create(env)
    stamp = env / STAMP
    wanted = _requirements_hash()
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        print("[course] installing requirements.txt (first run: a few minutes)", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "-r", str(ROOT / "requirements.txt")],
                       cwd=ROOT, check=True)
        stamp.write_text(wanted + "\n")
    return python


def render(python: Path, notebooks: list[str]) -> int:
    """Execute notebooks (all by default) top to bottom in a fresh kernel and write
    readable HTML copies to build/html/weekNN/. Full mode unless COURSE_FAST is set."""
    import time

    paths = [Path(n).resolve() for n in notebooks] or sorted((ROOT / "notebooks").glob("week*/*.ipynb"))
    env = dict(os.environ)
    env.setdefault("COURSE_FAST", "0")
    failed, start = [], time.perf_counter()
    for nb in paths:
        out = ROOT / "build" / "html" / nb.parent.name
        t0 = time.perf_counter()
        print(f"[course] rendering {nb.relative_to(ROOT)} (COURSE_FAST={env['COURSE_FAST']})", flush=True)
        rc = subprocess.run([str(python), "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
                             "--ExecutePreprocessor.timeout=1800", "--ExecutePreprocessor.kernel_name=python3",
                             "--output-dir", str(out), str(nb)], cwd=nb.parent, env=env).returncode
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"[course] {nb.name}: {status} in {time.perf_counter() - t0:.0f} s -> {out / (nb.stem + '.html')}",
              flush=True)
        if rc:
            failed.append(nb.name)
    print(f"[course] rendered {len(paths) - len(failed)} of {len(paths)} notebooks in "
          f"{time.perf_counter() - start:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("lab", "test", "render", "setup"):
        print(__doc__)
        return 2
    command, extra = argv[0], argv[1:]
    try:
        python = ensure_environment()
    except subprocess.CalledProcessError as err:
        print(f"[course] setup failed ({err}); see the README's troubleshooting section", file=sys.stderr)
        return 1
    if command == "setup":
        return 0
    if command == "render":
        return render(python, extra)
    if command == "lab":
        # serve the repository (notebooks/ and solutions/), open the file browser in notebooks/
        cmd = [str(python), "-m", "jupyterlab", str(ROOT), "--LabApp.default_url=/lab/tree/notebooks", *extra]
        if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in extra:
            cmd.append("--allow-root")  # containers often run as root; JupyterLab refuses without it
        env = dict(os.environ)
    else:
        cmd = [str(python), "-m", "pytest", *extra]
        env = dict(os.environ)
        env.setdefault("COURSE_FAST", "1")
    print("[course] " + " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
