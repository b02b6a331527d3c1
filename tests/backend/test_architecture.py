"""The rules of docs/architecture.md that matter, checked on the source: the backend's packages import only
those below them along the data path, nothing imports a private name across packages, and the plugin imports
neither the backend nor its heavy packages."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BACKEND = REPO / "backend" / "tower_detector"
PLUGIN = REPO / "tower_detector_plugin"

# the backend's packages in pipeline order: each may import those on lower layers (and the root's __version__)
LAYERS = [("common",), ("geo",), ("sources", "synthetic"), ("datasets", "training"), ("prediction",), ("results",),
          ("review",), ("pipeline",)]
FRONT_ENDS = ("cli", "remote", "__main__")  # they run the stages: they may import any package
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
HEAVY = ("tensorflow", "keras", "hyperopt", "boto3", "botocore", "rasterio", "label_maker", "tower_detector",
         "numpy", "shapely", "osmium", "pyproj")


def imports(path, package):
    """(module imported, names) of every import in a file; relative imports resolved against `package`."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            yield module, [a.name for a in node.names]


def backend_modules():
    for path in sorted(BACKEND.rglob("*.py")):
        rel = path.relative_to(BACKEND.parent).with_suffix("")
        parts = list(rel.parts)
        package = ".".join(parts[:-1] if parts[-1] != "__init__" else parts[:-1])
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts), package


def top(module):
    """The backend package (or top-level module) a module belongs to: tower_detector.geo.cover -> geo."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_packages_import_only_what_lies_below_them_on_the_data_path():
    wrong = []
    for path, module, package in backend_modules():
        mine = top(module)
        if mine in FRONT_ENDS or mine == "":
            continue
        for target, _ in imports(path, package):
            if target.startswith("tower_detector.") and top(target) != mine:
                if top(target) in FRONT_ENDS or LAYER[top(target)] >= LAYER[mine]:
                    wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_geography_stands_on_nothing_but_common():
    for path, module, package in backend_modules():
        if top(module) == "geo":
            used = {top(t) for t, _ in imports(path, package) if t.startswith("tower_detector.")}
            assert used <= {"geo", "common"}, (module, used)


def test_no_private_name_crosses_a_package():
    wrong = []
    for path, module, package in backend_modules():
        for target, names in imports(path, package):
            if target.startswith("tower_detector") and top(target) != top(module):
                wrong += [f"{module} imports {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
                if any(part.startswith("_") and part != "__main__" for part in target.split(".")):
                    wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_plugin_imports_neither_the_backend_nor_its_heavy_packages():
    wrong = []
    for path in sorted(PLUGIN.rglob("*.py")):
        if path.name == "resources.py":
            continue
        for target, _ in imports(path, "tower_detector_plugin"):
            if target and target.split(".")[0] in HEAVY:
                wrong.append(f"{path.relative_to(REPO)} imports {target}")
    assert not wrong, "\n".join(wrong)
