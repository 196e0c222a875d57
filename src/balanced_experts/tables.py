"""Paper-ready tables: a setting's report, and several settings side by side, as Markdown
and as LaTeX (booktabs), from the per-seed report rows (``report_seeds.csv``).

Every cell is the mean over the seeds, ± the sample standard deviation (ddof 1) when there
are two or more; the number of seeds is stated in the caption (and, side by side, above
each setting's columns).

Rows, in groups: the method (``experts_calibrated``); its ablations (the other fusions of
the experts, the most complete first, then the oracle, an upper bound); the baselines on
the base model (the report's order); the peers (:data:`balanced_experts.methods.PEER_METHODS`).

Marking rule: a column's best cell is set in bold only if it is better than every other
ranked row on every seed, paired by seed (so it is also the best on the mean). Higher is
better for accuracies, lower for ECE and NLL. The values compared are the per-seed report
rows as written (two decimals), so a tie on any seed marks nothing. Upper bounds (the
oracle) are not ranked, and rows without a value on every seed are not ranked. With one
seed nothing is marked, and the caption says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pandas as pd

from . import SPLIT_NAMES
from .files import replacing
from .methods import METHODS, PEER_METHODS
from .over_seeds import ECE_BINS, METRIC_COLUMNS, mean_over_seeds

THE_METHOD = "experts_calibrated"
"""The method this project implements: the first row."""

UPPER_BOUNDS = ("oracle",)
"""Rows that use the test labels: shown with the ablations, never ranked."""

LOWER_IS_BETTER = ("ece", "nll")
FOLDS = (*SPLIT_NAMES, "all")
"""The accuracy columns: Many / Medium / Few / All."""

DECIMALS = {"nll": 2}
"""Decimals shown per column; one where not listed."""


def method_groups(methods) -> list[list[str]]:
    """``methods`` (e.g. the rows present) in the table's order, in its groups (the method,
    its ablations, the baselines, the peers); empty groups are left out."""
    fusions = [m for m in METHODS if m.startswith("experts_") and m != THE_METHOD]
    groups = [[THE_METHOD], [*reversed(fusions), *UPPER_BOUNDS], [m for m in METHODS if m.startswith("base")],
              list(PEER_METHODS)]
    ordered = [m for group in groups for m in group]
    unknown = [m for m in methods if m not in ordered]
    if unknown:
        raise ValueError(f"methods {unknown} have no place in the table: no report method (methods.METHODS)")
    present = set(methods)
    return [kept for kept in ([m for m in group if m in present] for group in groups) if kept]


def header(column: str) -> str:
    return column.upper() if column in LOWER_IS_BETTER else column.capitalize()


@dataclass(frozen=True)
class Cell:
    mean: float
    std: float  # NaN with one seed
    marked: bool = False


@dataclass(frozen=True)
class Block:
    """One setting's columns: its seeds and a cell per (method, column)."""

    title: str
    columns: tuple[str, ...]
    seeds: tuple[int, ...]
    cells: dict  # (method, column) -> Cell


def best_method(values: pd.DataFrame, lower_is_better: bool) -> str | None:
    """The row of ``values`` (seeds x methods) to mark in bold by the module's rule, or None."""
    ranked = [m for m in values.columns if m not in UPPER_BOUNDS and values[m].notna().all()]
    if len(values) < 2 or len(ranked) < 2:
        return None
    scores = -values[ranked] if lower_is_better else values[ranked]
    best = scores.mean().idxmax()
    others = scores.drop(columns=best)
    return best if (others.lt(scores[best], axis=0)).all().all() else None


def setting_block(rows: pd.DataFrame, title: str, columns=None) -> Block:
    """A setting's cells from its per-seed report rows (``seed, method, <metrics>``).
    ``columns``: the metrics shown (default: every report metric the rows have a value of)."""
    if columns is None:
        columns = [c for c in METRIC_COLUMNS if c in rows and rows[c].notna().any()]
    summary = mean_over_seeds(rows.reindex(columns=["seed", "method", *METRIC_COLUMNS])).set_index("method")
    cells = {}
    for column in columns:
        best = best_method(rows.pivot(index="seed", columns="method", values=column), column in LOWER_IS_BETTER)
        for method, row in summary.iterrows():
            cells[method, column] = Cell(row[column], row[f"{column}_std"], method == best)
    return Block(title, tuple(columns), tuple(int(s) for s in rows["seed"].unique()), cells)


# -- rendering ----------------------------------------------------------------------------

_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                   "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX source that prints it (underscores in method names, %, & ...)."""
    return "".join(_LATEX_SPECIALS.get(character, character) for character in str(text))


def _number(value: float, column: str) -> str:
    return f"{value:.{DECIMALS.get(column, 1)}f}"


def _cell_text(cell: Cell | None, column: str, plus_minus: str) -> str | None:
    """``mean ± std`` (the mean alone for one seed); None for a cell without a value."""
    if cell is None or math.isnan(cell.mean):
        return None
    text = _number(cell.mean, column)
    return text if math.isnan(cell.std) else f"{text}{plus_minus}{_number(cell.std, column)}"


def _seeds_phrase(seeds) -> str:
    if len(seeds) == 1:
        return f"one seed ({seeds[0]}): no spread, nothing marked"
    return f"mean ± sample std over {len(seeds)} seeds ({', '.join(map(str, seeds))})"


def _mark_rule(columns) -> str:
    lower = [header(c) for c in columns if c in LOWER_IS_BETTER]
    better = f" (lower is better for {' and '.join(lower)})" if lower else ""
    return (f"bold: best of its column on every seed, paired by seed{better}; "
            f"{', '.join(UPPER_BOUNDS)}: an upper bound, not ranked")


@dataclass(frozen=True)
class Table:
    """Rows in groups, one or more blocks of columns, a caption (plain text) and a LaTeX label."""

    groups: list[list[str]]
    blocks: list[Block]
    caption: str
    label: str

    def markdown(self) -> str:
        several = len(self.blocks) > 1
        heads = [f"{b.title} {header(c)}" if several else header(c) for b in self.blocks for c in b.columns]
        lines = [self.caption, "", "| Method | " + " | ".join(heads) + " |",
                 "|:---|" + "---:|" * len(heads)]
        for method in (m for group in self.groups for m in group):
            cells = []
            for block in self.blocks:
                for column in block.columns:
                    cell = block.cells.get((method, column))
                    text = _cell_text(cell, column, " ± ") or "–"
                    cells.append(f"**{text}**" if cell is not None and cell.marked else text)
            lines.append(f"| `{method}` | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        widths = [len(b.columns) for b in self.blocks]
        lines = ["% Generated by balanced_experts.tables from the per-seed report rows; needs \\usepackage{booktabs}.",
                 r"\begin{table}[t]", r"  \centering",
                 f"  \\caption{{{latex_escape(self.caption)}}}", f"  \\label{{{self.label}}}",
                 f"  \\begin{{tabular}}{{l{'c' * sum(widths)}}}", r"    \toprule"]
        if len(self.blocks) > 1:
            spans = [f"\\multicolumn{{{w}}}{{c}}{{{latex_escape(_block_heading(b))}}}"
                     for b, w in zip(self.blocks, widths)]
            lines.append("     & " + " & ".join(spans) + r" \\")
            starts = [2 + sum(widths[:i]) for i in range(len(widths))]
            lines.append("    " + " ".join(f"\\cmidrule(lr){{{s}-{s + w - 1}}}" for s, w in zip(starts, widths)))
        heads = [header(c) for b in self.blocks for c in b.columns]
        lines += ["    Method & " + " & ".join(heads) + r" \\", r"    \midrule"]
        for index, group in enumerate(self.groups):
            if index:
                lines.append(r"    \midrule")
            for method in group:
                cells = []
                for block in self.blocks:
                    for column in block.columns:
                        cell = block.cells.get((method, column))
                        text = _cell_text(cell, column, r" $\pm$ ") or "--"
                        cells.append(f"\\textbf{{{text}}}" if cell is not None and cell.marked else text)
                lines.append(f"    {latex_escape(method)} & " + " & ".join(cells) + r" \\")
        lines += [r"    \bottomrule", r"  \end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"


def _block_heading(block: Block) -> str:
    return f"{block.title} ({len(block.seeds)} seed{'s' if len(block.seeds) > 1 else ''})"


def _label(name: str) -> str:
    return "tab:" + re.sub(r"[^A-Za-z0-9-]+", "-", name)


def _metrics_phrase(columns) -> str:
    phrase = "test top-1 accuracy (%) on the balanced test set, " + " / ".join(
        header(c) for c in columns if c in FOLDS)
    if "ece" in columns:
        phrase += f"; ECE (%, {ECE_BINS} bins)"
    if "nll" in columns:
        phrase += "; NLL (nats)"
    return phrase


def setting_table(rows: pd.DataFrame, setting: str) -> Table:
    """The table of one setting (``results/<setting>/report.md`` and ``.tex``)."""
    block = setting_block(rows, setting)
    caption = f"{setting}: {_metrics_phrase(block.columns)}; {_seeds_phrase(block.seeds)}"
    if len(block.seeds) > 1:
        caption += f"; {_mark_rule(block.columns)}"
    return Table(method_groups(rows["method"].unique()), [block], caption + ".", _label(setting))


def summary_table(rows: dict[str, pd.DataFrame], columns=("all",), label: str = "summary") -> Table:
    """Several settings side by side (``setting -> per-seed report rows``), ``columns`` of each
    (``("all",)`` or :data:`FOLDS`); every setting's seeds are stated above its columns."""
    if not rows:
        raise ValueError("a summary table needs at least one setting")
    blocks = [setting_block(frame, name, list(columns)) for name, frame in rows.items()]
    methods = list(dict.fromkeys(m for frame in rows.values() for m in frame["method"]))
    seeds = {len(b.seeds) for b in blocks}
    spread = ("one seed per setting: no spread, nothing marked" if seeds == {1} else
              "mean ± sample std over each setting's seeds (above its columns); "
              "a setting with one seed has nothing marked")
    caption = f"{_metrics_phrase(columns)}; {spread}"
    if seeds != {1}:
        caption += f"; {_mark_rule(columns)}"
    return Table(method_groups(methods), blocks, caption + ".", _label(label))


def write_table(table: Table, markdown_path, latex_path) -> None:
    """``table`` as Markdown at ``markdown_path`` and as LaTeX (``\\input`` it) at ``latex_path``."""
    for path, text in ((markdown_path, table.markdown()), (latex_path, table.latex())):
        with replacing(path) as tmp:
            tmp.write_text(text)
