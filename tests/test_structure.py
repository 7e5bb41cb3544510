"""The house a reader walks through: imports flow one way (no module imports one that imports it back, even inside a
function), every file under 500 lines, every function short enough to read (or saying why not), and
`python train.py --help` about as fast as importing torch. Run: python -m pytest -q tests/test_structure.py"""
import ast
import glob
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = {os.path.basename(p)[:-3]: p for p in glob.glob(os.path.join(REPO, "*.py"))}
FILES = sorted(MODULES.values()) + sorted(glob.glob(os.path.join(REPO, "tests", "*.py")))
MAX_LINES, MAX_FUNCTION = 500, 80


def imports(path):
    """The project modules a file imports, anywhere in it (top level or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
        out |= {n.split(".")[0] for n in names if n.split(".")[0] in MODULES}
    return out


def cycle(graph):
    """One import cycle of the graph as a list of modules, or None (depth-first search, three colours)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = "done"
        stack.pop()
        return None
    return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)


def test_the_cycle_finder_finds_cycles():  # the check below could not fail without this
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert cycle({"a": {"a"}}) == ["a", "a"]


def test_imports_flow_one_way():
    graph = {m: imports(p) - {m} for m, p in MODULES.items()}
    assert graph["train"] >= {"settings", "demo", "prompted"}  # the dispatch: train.py imports the entry points ...
    assert not graph["demo"] & {"train", "settings"} and "train" not in graph["prompted"]  # ... which do not import it
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_every_file_is_under_500_lines():
    long = {os.path.relpath(p, REPO): n for p in FILES if (n := sum(1 for _ in open(p, encoding="utf-8"))) >= MAX_LINES}
    assert not long, f"split these along a real seam: {long}"


def test_functions_are_short_or_say_why():
    """A function over MAX_FUNCTION lines says why in its docstring ("Long because ...")."""
    long = []
    for path in FILES:
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    node.end_lineno - node.lineno + 1 > MAX_FUNCTION and \
                    "long because" not in (ast.get_docstring(node) or "").lower():
                long.append(f"{os.path.relpath(path, REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def fastest(argv, n=3):
    """The fastest of n runs of a command, in seconds (the least disturbed by other load on the machine)."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=REPO, check=True, capture_output=True)
        best = min(best, time.perf_counter() - t0)
    return best


def test_help_costs_little_more_than_importing_torch():
    """--help parses before anything heavy: torch is the bulk of it (the flags' defaults read dial.py and the
    device); the tokenizer, safetensors, plotting and the reference libraries are imported only by what uses them."""
    shown = subprocess.run([sys.executable, "-c", "import runpy, sys\nsys.argv = ['train.py', '--help']\n"
                            "try:\n    runpy.run_path('train.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
                            "print(' '.join(sorted(sys.modules)))"], cwd=REPO, check=True, capture_output=True, text=True)
    loaded = set(shown.stdout.split("\n")[-2].split())
    assert "usage: python train.py" in shown.stdout and "torch" in loaded
    heavy = {"sentencepiece", "safetensors", "matplotlib", "sklearn", "scipy", "transformers", "peft", "gguf"}
    assert not loaded & heavy, loaded & heavy
    torch_s = fastest([sys.executable, "-c", "import torch"])
    help_s = fastest([sys.executable, "train.py", "--help"])
    assert help_s < 1.5 * torch_s + 0.5, (help_s, torch_s)  # measured: 1.0x to 1.1x on 2 shared CPU cores


def test_scripts_write_under_runs_by_default():
    """A committed picture (assets/) is rewritten only when a command names it: every output path a flag defaults to
    lies under runs/."""
    defaults = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, ast.keyword) and node.arg == "default" and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, str) and node.value.value.endswith((".png", ".json", ".jsonl")):
                defaults.append((os.path.basename(path), node.value.value))
    assert ("toy_moons.py", "runs/toy_moons.png") in defaults and ("rlhf.py", "runs/rlhf.png") in defaults
    assert all(d.startswith("runs/") for _, d in defaults), defaults
