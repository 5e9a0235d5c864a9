"""How much room every notebook assert has: run notebooks and record both sides of each check.

Run (from the repository root, in the course's environment):

    python bench/assert_margins.py [--fast] [--seeds 0 1 2] [--data DIR] [--out FILE.json] [NOTEBOOK ...]

Each notebook runs top to bottom in a fresh kernel, once per seed (``COURSE_SEED``),
in full mode or with ``--fast`` in fast mode, on the data folder ``--data``
(``COURSE_DATA``; point it at a folder with only the two ``t10k`` files for the
offline fallback split). After every code cell that holds ``assert`` statements
at its top level, a cell appended by this script (never saved) evaluates the two
sides of each comparison, ``assert a < b`` -> ``a`` and ``b``, in the kernel and
prints them. Asserts inside functions and loops run as written (a failure still
fails the run) but only the ones at top level and in loops (last iteration) are
measured. The table printed at the end has, per assert: notebook, cell, the
assert's text, the measured value, the bound and the margin (positive: holds),
and the notebook's wall time. ``--out`` also writes everything as JSON, with what each
checked cell printed.

This is a measurement, not a test: it does not fail on a small margin, it shows it.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
TAG = "__ASSERT_MARGINS__"
_OPS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}


def _top_level_asserts(source: str):
    """(assert text, left expression, op, right expression, in_loop) for the measurable asserts."""
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: nothing to measure
        return []
    found = []

    def visit(nodes, in_loop):
        for node in nodes:
            if isinstance(node, ast.Assert):
                test = node.test
                if (isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS):
                    found.append((ast.unparse(test), ast.unparse(test.left), _OPS[type(test.ops[0])],
                                  ast.unparse(test.comparators[0]), in_loop))
                elif (isinstance(test, ast.Call) and ast.unparse(test.func) in ("torch.allclose", "torch.isclose")
                      and len(test.args) == 2 and any(k.arg == "atol" for k in test.keywords)):
                    # |a - b| against atol (rtol, where given, is shown in the text)
                    a, b = (ast.unparse(v) for v in test.args)
                    atol = next(ast.unparse(k.value) for k in test.keywords if k.arg == "atol")
                    found.append((ast.unparse(test), f"(({a}) - ({b})).abs().max()", "<=", atol, in_loop))
                else:
                    found.append((ast.unparse(test), ast.unparse(test), "is true", "True", in_loop))
            elif isinstance(node, (ast.For, ast.While, ast.With, ast.If)):
                visit(node.body, in_loop or isinstance(node, (ast.For, ast.While)))
                visit(getattr(node, "orelse", []), in_loop)

    visit(tree.body, False)
    return found


def _probe_cell(cell_index: int, asserts) -> str:
    """Source of a cell that evaluates both sides of each assert and prints them as JSON."""
    items = [dict(cell=cell_index, text=t, left=lhs, op=o, right=r, in_loop=lp) for t, lhs, o, r, lp in asserts]
    return (f"import json as _json\n_items = {items!r}\n_out = []\n"
            "for _it in _items:\n"
            "    _row = dict(_it)\n"
            "    for _side in ('left', 'right'):\n"
            "        try:\n"
            "            _v = eval(_it[_side])\n"
            "            _row[_side + '_value'] = float(_v) if _it['op'] != 'is true' else bool(_v)\n"
            "        except Exception as _err:\n"
            "            _row[_side + '_value'] = None\n"
            "            _row['note'] = f'{type(_err).__name__}: {_err}'[:120]\n"
            "    _out.append(_row)\n"
            f"print({TAG!r} + _json.dumps(_out))\n"
            "del _json, _items, _out, _it, _row, _side\n")


def _margin(row):
    a, b, op = row.get("left_value"), row.get("right_value"), row["op"]
    if op == "is true" or a is None or b is None:
        return None
    return b - a if op in ("<", "<=") else a - b


def run(path: Path, env: dict, timeout: int = 1800):
    nb = nbformat.read(path, as_version=4)
    probed = nbformat.v4.new_notebook(metadata=nb.metadata)
    for i, cell in enumerate(nb.cells):
        probed.cells.append(cell)
        if cell.cell_type == "code":
            asserts = _top_level_asserts(cell.source)
            if asserts:
                probed.cells.append(nbformat.v4.new_code_cell(_probe_cell(i, asserts)))
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    t0, error = time.perf_counter(), None
    try:
        NotebookClient(probed, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except CellExecutionError as err:
        error = str(err).strip().splitlines()[-1][:300]
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    wall = time.perf_counter() - t0
    rows, printed = [], {}
    for j, cell in enumerate(probed.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            if out.get("output_type") == "stream" and TAG in text:
                found = json.loads(text.split(TAG, 1)[1].splitlines()[0])
                rows += found
                # what the checked cell printed (asserts over loops or lists print their parts)
                before = probed.cells[j - 1].get("outputs", [])
                printed[found[0]["cell"]] = "".join(o.get("text", "") for o in before
                                                    if o.get("output_type") == "stream")[-3000:]
    for row in rows:
        row["margin"] = _margin(row)
    return dict(notebook=str(path.relative_to(ROOT)), wall_s=round(wall, 1), error=error, asserts=rows,
                printed=printed)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="default: every notebook")
    ap.add_argument("--fast", action="store_true", help="fast mode (COURSE_FAST=1); default full mode")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data", help="data folder (COURSE_DATA); default: the current setting")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    paths = [Path(n).resolve() for n in args.notebooks] or sorted((ROOT / "notebooks").glob("week*/*.ipynb"))
    results = []
    for seed in args.seeds:
        for path in paths:
            env = {"COURSE_FAST": "1" if args.fast else "0", "COURSE_SEED": str(seed)}
            if args.data:
                env["COURSE_DATA"] = str(Path(args.data).resolve())
            res = run(path, env)
            res.update(seed=seed, mode="fast" if args.fast else "full",
                       data=env.get("COURSE_DATA", os.environ.get("COURSE_DATA", "default")))
            results.append(res)
            print(f"{res['notebook']} seed {seed} {res['mode']}: {res['wall_s']} s, {len(res['asserts'])} asserts "
                  f"measured{', FAILED: ' + res['error'] if res['error'] else ''}", flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\n{'notebook':44s} {'seed':>4s} {'cell':>4s}  {'value':>11s} {'op':>2s} {'bound':>11s} "
          f"{'margin':>10s}  assert")

    def fmt(v):
        return f"{v:11.4g}" if isinstance(v, float) else f"{str(v):>11s}"

    for res in results:
        for row in res["asserts"]:
            value, bound = row.get("left_value"), row.get("right_value")
            margin = "" if row["margin"] is None else f"{row['margin']:10.3g}"
            print(f"{res['notebook'][10:54]:44s} {res['seed']:4d} {row['cell']:4d}  {fmt(value)} {row['op'][:2]:>2s} "
                  f"{fmt(bound)} {margin:>10s}  {row['text'][:70]}")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
