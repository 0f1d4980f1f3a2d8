"""The lint gate's second half: no function or method longer than a screen (60 lines) in the
given folders; prints each one that is, and exits 1 if any.

    python scripts/check_function_length.py qrl brokers algorithms
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES = 60


def long_functions(folder: Path, limit: int = MAX_LINES) -> list[tuple[Path, int, str, int]]:
    """(file, first line, name, lines) of every function in folder's Python files longer than limit."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append((path, node.lineno, node.name, length))
    return found


def main(folders: list[str]) -> int:
    found = [f for folder in folders for f in long_functions(Path(folder))]
    for path, line, name, length in found:
        print(f"{path}:{line}: {name} is {length} lines (at most {MAX_LINES})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["qrl", "brokers", "algorithms"]))
