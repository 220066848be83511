"""The shape of the code: every module imports alone, imports sit at the top of each file, the import graph has
no cycle, no script imports another script, and the pipeline scripts never branch on a dataset's name or on the
modality (what a modality needs is asked of its INR)."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = ['inr', 'nerf', 'occupancy', 'model', 'losses', 'data', 'sample', 'fid', 'train', 'bench']


def local_imports(module):
    """(top-level local imports, local imports inside functions) of a module, by parsing its source."""
    tree = ast.parse(open(os.path.join(ROOT, f'{module}.py')).read())
    top, nested = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            names = {n.split('.')[0] for n in names if n} & set(MODULES)
            (top if node in tree.body else nested).update(names)
    return top, nested


@pytest.mark.parametrize('module', MODULES)
def test_each_module_imports_alone_in_a_fresh_interpreter(module):
    code = (f"import sys; import {module}; "
            f"print(sorted(m for m in {MODULES!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert module in r.stdout


def test_imports_are_at_the_top_the_graph_has_no_cycle_and_nothing_imports_a_script():
    graph = {}
    for m in MODULES:
        top, nested = local_imports(m)
        assert not nested, f"{m}.py imports {sorted(nested)} inside a function"
        graph[m] = top - {m}
    scripts = {'train', 'sample', 'fid', 'bench'}
    assert not [(m, d) for m, deps in graph.items() for d in deps if d in scripts], "a module imports a script"
    done, stack = set(), []

    def visit(m):  # depth-first: meeting a module already on the stack is a cycle
        assert m not in stack, f"import cycle: {' -> '.join(stack[stack.index(m):] + [m])}"
        if m in done:
            return
        stack.append(m)
        for d in sorted(graph[m]):
            visit(d)
        stack.pop()
        done.add(m)
    for m in MODULES:
        visit(m)


@pytest.mark.parametrize('script', ['train', 'sample', 'fid', 'bench'])
def test_pipeline_scripts_never_branch_on_a_dataset_name_or_the_modality(script):
    """What a modality or dataset needs is asked of it (cfg['modality'], a dataset's attributes), not keyed on names."""
    tree = ast.parse(open(os.path.join(ROOT, f'{script}.py')).read())
    names = {'shapes', 'cifar10', 'celeba', 'folder', 'shapes3d', 'srn_cars'}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            reads_dataset = any(isinstance(s, ast.Subscript) and isinstance(s.slice, ast.Constant)
                                and s.slice.value == 'dataset' for s in sides)
            consts = {c.value for s in sides for c in ast.walk(s) if isinstance(c, ast.Constant)}
            assert not (reads_dataset and consts & names), f"{script}.py:{node.lineno} compares the dataset's name"
            reads_modality = any(isinstance(c, ast.Constant) and c.value == 'modality' for s in sides for c in ast.walk(s))
            assert not reads_modality and not consts & {'nerf', 'image'}, f"{script}.py:{node.lineno} branches on the modality"
        if isinstance(node, ast.Name):
            assert node.id != 'NERF_DATASETS', f"{script}.py:{node.lineno} uses NERF_DATASETS"


def test_tools_use_the_library_modules_not_the_scripts():
    """tools/ scripts back docs/; they import the library (model, losses, inr, nerf, data), never a script."""
    folder = os.path.join(ROOT, 'tools')
    for name in sorted(os.listdir(folder)):
        if name.endswith('.py'):
            tree = ast.parse(open(os.path.join(folder, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or '']
                    bad = {m.split('.')[0] for m in mods} & {'train', 'sample', 'fid', 'bench'}
                    assert not bad, f"tools/{name}:{node.lineno} imports {sorted(bad)}"
