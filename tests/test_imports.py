"""The import scanner behind every stage's code inputs (balanced_experts.imports), on a small
package written here. (tests/test_workflow_code.py holds it against modulefinder on the real
stage programs, through Snakemake.)"""

from balanced_experts.imports import LIBRARY, library_files

# Each module below is imported in one place only, so that each kind of import counts.
PACKAGE = {
    "__init__.py": "",
    "a.py": "from . import b\nimport balanced_experts.sub.c as c\n",
    "b.py": "import os\n\n\ndef later():\n    from balanced_experts import d\n",
    "d.py": "try:\n    import balanced_experts.e\nexcept ImportError:\n    from . import i\n"
            "finally:\n    from . import j\n",
    "e.py": "match 1:\n    case 1:\n        from .h import VALUE\n",
    "h.py": "if False:\n    pass\nelse:\n    from . import k\nVALUE = 1\n",
    "sub/__init__.py": "",
    "sub/c.py": "from ..f import g\n",
    "f.py": "def g():\n    pass\n",
    "i.py": "", "j.py": "", "k.py": "", "unused.py": "",
}


def test_every_module_imported_anywhere_transitively_and_each_package_above_it(tmp_path):
    """Relative and absolute imports, at the top, in a function, try/except/finally, a match
    case and an else block; a package's __init__.py runs when one of its modules is imported;
    a name imported from a module (g, VALUE) is no module; third-party imports and a module
    nothing imports are left out."""
    for name, text in PACKAGE.items():
        (tmp_path / "src" / LIBRARY / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / LIBRARY / name).write_text(text)
    (tmp_path / "program.py").write_text(f"import sys\n\nfrom {LIBRARY}.a import c\n")
    expected = ["__init__.py", "a.py", "b.py", "d.py", "e.py", "f.py", "h.py", "i.py", "j.py", "k.py",
                "sub/__init__.py", "sub/c.py"]
    assert library_files("program.py", str(tmp_path)) == sorted(f"src/{LIBRARY}/{name}" for name in expected)
    # From a library module: its own imports, relative ones resolved from its package.
    assert library_files(f"src/{LIBRARY}/sub/c.py", str(tmp_path)) == [
        f"src/{LIBRARY}/__init__.py", f"src/{LIBRARY}/f.py"]


def test_the_layout_page_names_every_library_module():
    """docs/layout.md walks a newcomer through the library: a module added, renamed or
    moved into a package is named there too."""
    import re
    from pathlib import Path

    root = Path(__file__).parents[1]
    page = (root / "docs" / "layout.md").read_text()
    library = page[page.index("src/balanced_experts/"):page.index("\ntests/ ")]
    named = set(re.findall(r"\w+", library))
    modules = {path.stem if path.is_file() else path.name
               for path in (root / "src" / LIBRARY).iterdir()
               if (path.suffix == ".py" and path.stem != "__init__") or (path / "__init__.py").exists()}
    assert modules - named == set()
