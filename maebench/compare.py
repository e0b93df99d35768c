"""Side-by-side comparison of evaluations: upstreams x tasks from results.json files, next to the MAE-AST paper's
numbers for MAE-AST and SSAST, as a rich table, Markdown, CSV and a PNG bar chart.

Only results.json files are read (design rule: reports come from these files alone). Each (upstream, probe) pair is
one row; when the same pair was evaluated on a task more than once, the newest result counts. A row is compared
against the paper row of the same family and tokenizer (inferred from the upstream's preset name or checkpoint
config, or forced with `reference=`); the paper's numbers are fine-tuned, so a frozen-probe row is expected lower.

Every row shows the protocol each cell used (from results.json "protocol"); a cell whose protocol differs from the
one behind the paper's number for that column (fine-tuning by the reference family's own recipe,
`maebench.downstream.probes.protocol`) is marked with † and its differences are listed under the table;
`strict=True` refuses such cells. Results written before protocols were recorded (0.1.0) read as "unrecorded".
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maebench.errors import MaebenchError
from maebench.upstream.checkpoint import list_checkpoints
from maebench.upstream.vocabulary import modern

__all__ = [
    "PAPER",
    "TASK_LABELS",
    "Comparison",
    "Reference",
    "Result",
    "Row",
    "build_comparison",
    "find_results",
    "read_result",
    "render_csv",
    "render_markdown",
    "render_rich",
    "write_outputs",
    "write_png",
]

# task key -> column label, in the paper's column order
TASK_LABELS: dict[str, str] = {
    "as20k": "AS-20K", "esc50": "ESC-50", "ks2": "KS2", "ks1": "KS1", "sid": "SID", "er": "ER",
}


@dataclass(frozen=True)
class Reference:
    key: str
    label: str
    scores: dict[str, float]


# The MAE-AST paper's table (Baade et al. 2022; accuracy %, AS-20K mAP %), fine-tuned upstreams.
PAPER: dict[str, Reference] = {ref.key: ref for ref in (
    Reference("ssast_patch", "SSAST Base Patch-400 (paper)",
              {"as20k": 28.6, "esc50": 88.8, "ks2": 98.0, "ks1": 96.0, "sid": 64.3, "er": 59.6}),
    Reference("ssast_frame", "SSAST Base Frame-400 (paper)",
              {"esc50": 85.9, "ks2": 98.1, "ks1": 96.7, "sid": 80.8, "er": 60.5}),
    Reference("mae_ast_patch_6", "MAE-AST Patch 6L (paper)",
              {"as20k": 28.3, "esc50": 88.6, "ks2": 97.4, "ks1": 95.0, "sid": 37.6, "er": 58.7}),
    Reference("mae_ast_frame_6", "MAE-AST Frame 6L (paper)",
              {"as20k": 25.9, "esc50": 88.0, "ks2": 97.8, "ks1": 96.6, "sid": 58.6, "er": 60.2}),
    Reference("mae_ast_patch", "MAE-AST Patch 12L (paper)",
              {"as20k": 30.6, "esc50": 90.0, "ks2": 97.9, "ks1": 95.8, "er": 59.8}),
    Reference("mae_ast_frame", "MAE-AST Frame 12L (paper)",
              {"as20k": 23.0, "esc50": 88.9, "ks2": 98.0, "ks1": 97.3, "sid": 63.3, "er": 62.1}),
)}
PAPER_NOTE = "Paper rows: MAE-AST paper (Baade et al., 2022), fine-tuned upstreams; AS-20K is mAP %, others accuracy %."
PROTOCOL_NOTE = "† protocol differs from the one behind the paper's number for that column:"
TEST_SELECTION_NOTE = "‡ selected on test data (each fold reported at the epoch with the best fold-mean test score):"
MERGE_NOTE = "note: results measured on different data or with different settings (not comparable as they stand):"


@dataclass(frozen=True)
class Result:
    """The fields of one results.json that the comparison needs."""

    path: Path
    task: str
    metric: str
    score: float
    std: float | None
    upstream: str
    upstream_path: str | None
    family: str
    probe: str
    created: str
    toy: bool = False
    protocol: dict[str, Any] | None = None  # results.json "protocol" (None: not recorded, 0.1.0)
    data_root: str | None = None  # results.json data.root: the dataset the score was measured on
    hparams: dict[str, Any] | None = None  # results.json probe.hparams: the probe settings used
    fingerprint: str | None = None  # results.json upstream.fingerprint: the weights evaluated
    chance: float | None = None  # results.json chance.score: the task's chance level (None: not recorded)
    baseline: dict[str, Any] | None = None  # results.json baseline: the run's random init, difference and noise
    selected_on_test: bool = False  # results.json protocol.selection.on_test: the score was picked on test data


def protocol_label(result: Result) -> str:
    """A short name of a cell's protocol: probe, recipe, input geometry, layer selection, feature layout."""
    protocol = result.protocol
    if not protocol:  # results from before protocols were recorded: still name the probe (linear / logreg / ...)
        return f"{result.probe} (protocol unrecorded)"
    fields = protocol.get("fields") or {}
    parts = [str(protocol.get("probe") or result.probe)]
    if fields.get("recipe"):
        parts.append(str(fields["recipe"]))
    if fields.get("input_geometry") == "global":
        parts.append(f"global {fields.get('target_length')}f")
    if fields.get("layers") == "last":
        parts.append("last layer")
    if fields.get("feature_layout") == "tokens":
        parts.append("tokens")
    if fields.get("dev_holdout") is False:
        parts.append("no dev")
    if result.selected_on_test:
        parts.append("test-selected")
    return " ".join(parts)


@dataclass
class Row:
    label: str
    upstream: str
    probe: str
    family: str
    upstream_path: str | None
    toy: bool = False
    results: dict[str, Result] = field(default_factory=dict)
    reference: Reference | None = None

    def paper_differences(self, task: str) -> list[str] | None:
        """How the cell's protocol differs from the paper's for that column of the row's reference (empty: the
        same; None: no reference number, or no protocol recorded)."""
        result = self.results.get(task)
        if self.reference is None or result is None or task not in self.reference.scores or not result.protocol:
            return None
        from maebench.downstream.paper_protocols import differences, paper_protocol

        paper = paper_protocol(self.reference.key, task)  # the key names the family: "ssast_frame", "mae_ast_..."
        if paper is None:
            return None
        return differences(result.protocol.get("fields") or {}, paper)

    def delta(self, task: str) -> float | None:
        if self.reference is None or task not in self.results or task not in self.reference.scores:
            return None
        return self.results[task].score - self.reference.scores[task]


@dataclass
class Comparison:
    tasks: list[str]
    rows: list[Row]
    references: list[Reference]
    notes: list[str] = field(default_factory=list)  # what was merged from different data roots or settings


# ------------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------------


def _number(value: Any, path: Path, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MaebenchError(f"{path}: {key} must be a number, got {value!r}; the results file is corrupt")
    return float(value)


RESULTS_FORMAT = 1  # results.json "maebench_results" (maebench.downstream.evaluate writes it)
_OPTIONAL_TYPES = (  # (where, key, accepted types) of fields the table uses beyond the numbers
    ("upstream", "path", (str, type(None))), ("upstream", "fingerprint", (str, type(None))),
    ("protocol", "fields", (dict, type(None))), ("protocol", "settings_for", (str, type(None))),
    ("probe", "hparams", (dict, type(None))), ("data", "root", (str, type(None))),
)


def _check_types(data: dict[str, Any], upstream: dict[str, Any], path: Path) -> None:
    """A field of the wrong type (a hand edit, another tool) is named here, not a TypeError in the table."""
    for where, key, types_ in _OPTIONAL_TYPES:
        section = upstream if where == "upstream" else data.get(where)
        if isinstance(section, dict) and not isinstance(section.get(key), types_):
            wanted = " or ".join("null" if t is type(None) else {"str": "a string", "dict": "an object"}[t.__name__]
                                 for t in types_)
            raise MaebenchError(f"{path}: {where}.{key} must be {wanted}, got {section[key]!r}; the results file "
                                "is corrupt: re-run that evaluation or move it away")


def read_result(path: str | Path) -> Result:
    """Parse one results.json (MaebenchError naming the file and field if it is not one)."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO or device would block the read
        raise MaebenchError(f"{path}: not a regular file; results.json files are plain files written by maebench")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MaebenchError(f"{path}: not a readable JSON file ({err}); re-run the evaluation") from None
    if not isinstance(data, dict) or "maebench_results" not in data:
        raise MaebenchError(f"{path}: not a maebench results file (no \"maebench_results\" field)")
    for key in ("task", "metric", "score", "upstream"):
        if key not in data:
            raise MaebenchError(f"{path}: missing field {key!r}; the results file is incomplete")
    if data["maebench_results"] != RESULTS_FORMAT:
        raise MaebenchError(f"{path}: results format {data['maebench_results']!r} is not one this maebench reads "
                            f"({RESULTS_FORMAT}); use the maebench that wrote it, or re-run the evaluation")
    upstream = data["upstream"] if isinstance(data["upstream"], dict) else {"name": str(data["upstream"])}
    _check_types(data, upstream, path)
    probe = data.get("probe") or {}
    std = data.get("std")
    dataset = data["data"] if isinstance(data.get("data"), dict) else {}
    hparams = probe.get("hparams") if isinstance(probe, dict) else None
    return Result(
        path=path,
        task=str(data["task"]),
        metric=str(data["metric"]),
        score=_number(data["score"], path, "score"),
        std=None if std is None else _number(std, path, "std"),
        upstream=str(upstream.get("name") or upstream.get("path") or "?"),
        upstream_path=upstream.get("path"),
        family=str(upstream.get("family") or ""),
        probe=str(probe.get("name") if isinstance(probe, dict) else probe or "?"),
        created=str(data.get("created") or ""),
        toy=bool(dataset.get("toy")),
        protocol=data["protocol"] if isinstance(data.get("protocol"), dict) else None,
        data_root=None if dataset.get("root") is None else str(dataset["root"]),
        hparams=hparams if isinstance(hparams, dict) else None,
        fingerprint=upstream.get("fingerprint") if isinstance(upstream.get("fingerprint"), str) else None,
        chance=_number(data["chance"]["score"], path, "chance.score") if isinstance(data.get("chance"), dict)
        else None,
        baseline=data["baseline"] if isinstance(data.get("baseline"), dict) else None,
        selected_on_test=_selected_on_test(data),
    )


def _selected_on_test(data: dict[str, Any]) -> bool:
    protocol = data.get("protocol") if isinstance(data.get("protocol"), dict) else {}
    selection = protocol.get("selection")
    return isinstance(selection, dict) and selection.get("on_test") is True


def find_results(paths: list[str | Path], skipped: list[str] | None = None) -> list[Result]:
    """Every results.json in `paths` (files, or directories searched recursively; regular files only). With
    `skipped`, a file that is not a valid results file is left out and its reason appended there."""
    found: list[Result] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = [f for f in sorted(path.rglob("results.json")) if f.is_file()]
        elif path.exists():
            files = [path]
        else:
            raise MaebenchError(f"results path {path} does not exist; pass results directories or results.json files")
        for file in files:
            try:
                found.append(read_result(file))
            except MaebenchError as err:
                if skipped is None:
                    raise
                skipped.append(str(err))
    return found


# ------------------------------------------------------------------------------------------------------------------
# Building the table
# ------------------------------------------------------------------------------------------------------------------


def _checkpoint_config(upstream_path: str | None) -> dict[str, Any] | None:
    """`config` of a native checkpoint (or a run's newest checkpoint) named in results.json, if still there."""
    if not upstream_path:
        return None
    path = Path(upstream_path)
    candidates = [path / "config.json"] + [step / "config.json" for step in reversed(list_checkpoints(path))]
    for candidate in candidates:
        try:
            meta = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and isinstance(meta.get("config"), dict):
            return meta["config"]
    return None


def infer_reference(upstream: str, family: str, upstream_path: str | None) -> Reference | None:
    """The paper row of the same family and tokenizer: from a preset name ('mae_ast_frame:tiny') or the
    checkpoint's config (tokenizer, encoder depth); None when neither tells."""
    name = upstream.lower()
    for key in ("mae_ast_patch", "mae_ast_frame", "ssast_patch", "ssast_frame"):
        if name.split(":")[0].endswith(key):
            return PAPER[key]
    config = modern(family, _checkpoint_config(upstream_path) or {})  # 0.1.0 checkpoints use older names
    tokenizer = config.get("tokenizer")
    if family in ("mae_ast", "ssast") and tokenizer in ("patch", "frame"):
        key = f"{family}_{tokenizer}"
        if family == "mae_ast" and config.get("depth") == 6:
            key += "_6"
        return PAPER[key]
    return None


def build_comparison(results: list[Result], reference: str | None = None, *, strict: bool = False) -> Comparison:
    """Rows per (upstream, probe), columns per task (paper order, then others), newest result per cell.
    `strict`: a MaebenchError naming every cell whose protocol differs from the paper's for its column."""
    if reference is not None and reference not in PAPER:
        raise MaebenchError(f"unknown reference {reference!r}; choose one of {', '.join(PAPER)}")
    probes = {r.probe for r in results}
    rows: dict[tuple[str, str, bool], Row] = {}
    older: dict[tuple[int, str], list[Result]] = {}  # (row, task) -> results a newer one replaced
    for result in sorted(results, key=lambda r: r.created):
        key = (result.upstream, result.probe, result.toy)
        if key not in rows:
            label = result.upstream if len(probes) == 1 else f"{result.upstream} ({result.probe})"
            label += " [toy data]" if result.toy else ""
            rows[key] = Row(label, result.upstream, result.probe, result.family, result.upstream_path, result.toy)
        if result.task in rows[key].results:
            older.setdefault((id(rows[key]), result.task), []).append(rows[key].results[result.task])
        rows[key].results[result.task] = result  # sorted by creation: the newest wins
    for row in rows.values():
        row.reference = PAPER[reference] if reference else infer_reference(row.upstream, row.family,
                                                                          row.upstream_path)
    seen = {r.task for r in results}
    tasks = [t for t in TASK_LABELS if t in seen] + sorted(seen - set(TASK_LABELS))
    used = [ref for ref in PAPER.values() if any(row.reference is ref for row in rows.values())]
    comparison = Comparison(tasks=tasks, rows=list(rows.values()), references=used or list(PAPER.values()))
    comparison.notes = merge_notes(comparison, older)
    if strict and protocol_notes(comparison):
        cells = "; ".join(protocol_notes(comparison))
        raise MaebenchError(f"cells whose protocol differs from the paper's: {cells}; evaluate them by the "
                            "paper's protocol (--probe finetune; ESC-50 --set model_selection=test_epoch_mean, "
                            "AS-20K --set train_labels=FILE) or compare without --strict")
    return comparison


def _setting_differences(results: list[Result]) -> list[str]:
    """"key: a vs b" for each probe setting whose value differs among `results` (in their order)."""
    out = []
    keys = sorted({key for r in results for key in (r.hparams or {})})
    for key in keys:
        values = list(dict.fromkeys(json.dumps((r.hparams or {}).get(key)) for r in results))
        if len(values) > 1:
            out.append(f"{key}: {' vs '.join(values)}")
    return out


def _differences(results: list[Result]) -> list[str]:
    """How `results` differ in what they were measured on: data roots, then probe settings."""
    out = []
    roots = list(dict.fromkeys(str(r.data_root) for r in results))
    if len(roots) > 1:
        out.append(f"data roots ({' vs '.join(roots)})")
    settings = _setting_differences([r for r in results if r.probe == results[0].probe])
    if settings:
        out.append(f"settings ({'; '.join(settings)})")
    return out


def merge_notes(comparison: Comparison, older: dict[tuple[int, str], list[Result]]) -> list[str]:
    """Where the table puts side by side (a column) or chooses between (a cell) results measured on different
    data roots or with different probe settings: such numbers are not comparable, and nothing else would say so."""
    notes = []
    for task in comparison.tasks:
        label = TASK_LABELS.get(task, task)
        cells = [(row, row.results[task]) for row in comparison.rows if task in row.results]
        groups: dict[tuple, list[tuple[Row, Result]]] = {}  # rows meant to be alike: same probe, data kind and
        for row, result in cells:  # default settings (fine-tuning defaults differ per family by design)
            settings_for = (result.protocol or {}).get("settings_for")
            groups.setdefault((row.probe, row.toy, settings_for), []).append((row, result))
        for (probe, _, _), members in groups.items():
            diffs = _differences([result for _, result in members])
            if diffs:
                rows = ", ".join(row.label for row, _ in members)
                notes.append(f"{label} column ({probe}: {rows}) merges results with different {'; '.join(diffs)}")
        for row, result in cells:
            replaced = older.get((id(row), task), [])
            diffs = _differences([result, *replaced]) if replaced else []
            if diffs:
                notes.append(f"{row.label} {label}: the newest of {len(replaced) + 1} results is shown "
                             f"({result.path}); the others had different {'; '.join(diffs)}")
    return notes


def protocol_notes(comparison: Comparison) -> list[str]:
    """"<row> <task>: <differences>" for every cell marked † (protocol differs from the paper's column)."""
    notes = []
    for row in comparison.rows:
        for task in comparison.tasks:
            diffs = row.paper_differences(task)
            if diffs:
                notes.append(f"{row.label} {TASK_LABELS.get(task, task)}: {', '.join(diffs)}")
    return notes


# ------------------------------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------------------------------


def _score(result: Result | None, marked: bool = False) -> str:
    if result is None:
        return "–"
    text = f"{result.score:.1f} ± {result.std:.1f}" if result.std is not None else f"{result.score:.1f}"
    return text + (" †" if marked else "") + (" ‡" if result.selected_on_test else "")


def test_selection_notes(comparison: Comparison) -> list[str]:
    """"<row> <task>" for every cell marked ‡ (its score was selected on test data)."""
    return [f"{row.label} {TASK_LABELS.get(task, task)} ({row.results[task].path})" for row in comparison.rows
            for task in comparison.tasks if task in row.results and row.results[task].selected_on_test]


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def _table_lines(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    header = ["upstream"] + [TASK_LABELS.get(t, t) for t in comparison.tasks]
    lines: list[list[str]] = []
    for row in comparison.rows:
        lines.append([row.label] + [_score(row.results.get(t), bool(row.paper_differences(t)))
                                    for t in comparison.tasks])
        lines.append(["  protocol"] + [protocol_label(row.results[t]) if t in row.results else "–"
                                       for t in comparison.tasks])
        lines += _baseline_lines(row, comparison.tasks)
        if row.reference is not None:
            lines.append([f"  Δ vs {row.reference.label}"] + [_signed(row.delta(t)) for t in comparison.tasks])
    for ref in comparison.references:
        lines.append([ref.label] + [
            f"{ref.scores[t]:.1f}" if t in ref.scores else "–" for t in comparison.tasks
        ])
    return header, lines


def _baseline_lines(row: Row, tasks: list[str]) -> list[list[str]]:
    """The row's baselines, when its results recorded them: its random init's score with the difference and its
    noise (`maebench eval --baseline`), and the task's chance level."""
    results = [row.results.get(t) for t in tasks]
    lines = []
    if any(r is not None and r.baseline for r in results):
        lines.append(["  random init (Δ ± noise)"] + [
            f"{r.baseline['score']:.1f} ({r.baseline['difference']:+.1f} ± {r.baseline['noise']:.1f})"
            if r is not None and r.baseline else "–" for r in results])
    if any(r is not None and r.chance is not None for r in results):
        lines.append(["  chance"] + [f"{r.chance:.1f}" if r is not None and r.chance is not None else "–"
                                     for r in results])
    return lines


def render_markdown(comparison: Comparison) -> str:
    header, lines = _table_lines(comparison)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(cell.strip().replace("|", "\\|") for cell in line) + " |" for line in lines]
    notes = "".join(f"\n- † {note}" for note in protocol_notes(comparison))
    on_test = "".join(f"\n- ‡ {note}" for note in test_selection_notes(comparison))
    merged = "".join(f"\n- {note}" for note in comparison.notes)
    return ("\n".join(out) + f"\n\n{PAPER_NOTE}\n" + (f"\n{PROTOCOL_NOTE}{notes}\n" if notes else "")
            + (f"\n{TEST_SELECTION_NOTE}{on_test}\n" if on_test else "")
            + (f"\n{MERGE_NOTE}{merged}\n" if merged else ""))


def render_csv(comparison: Comparison) -> str:
    """One line per row kind: result rows (score + std per task), their delta rows, and the paper rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = []
    for task in comparison.tasks:
        columns += [task, f"{task}_std"]
    writer.writerow(["kind", "upstream", "probe", "toy_data", "reference", *columns])

    def fmt(value: float | None) -> str:
        return "" if value is None else f"{value:.4g}"

    for row in comparison.rows:
        ref = row.reference.key if row.reference else ""
        values = []
        for task in comparison.tasks:
            result = row.results.get(task)
            values += [fmt(result.score if result else None), fmt(result.std if result else None)]
        writer.writerow(["result", row.upstream, row.probe, int(row.toy), ref, *values])
        protocols = []  # per task: the protocol's name, then matches / differs: ... / unrecorded
        for task in comparison.tasks:
            result, diffs = row.results.get(task), row.paper_differences(task)
            status = "" if result is None or diffs is None else ("differs: " + "; ".join(diffs) if diffs
                                                                   else "matches paper")
            protocols += [protocol_label(result) if result else "", status]
        writer.writerow(["protocol", row.upstream, row.probe, int(row.toy), ref, *protocols])
        results = [row.results.get(task) for task in comparison.tasks]
        if any(r is not None and r.baseline for r in results):  # the run's random init: its score and std
            writer.writerow(["init", row.upstream, row.probe, int(row.toy), ref, *[
                fmt(r.baseline[key] if r is not None and r.baseline else None) for r in results
                for key in ("score", "std")]])
        if any(r is not None and r.chance is not None for r in results):
            writer.writerow(["chance", row.upstream, row.probe, int(row.toy), ref, *[
                value for r in results for value in (fmt(r.chance if r is not None else None), "")]])
        if row.reference is not None:
            deltas = []
            for task in comparison.tasks:
                deltas += [fmt(row.delta(task)), ""]
            writer.writerow(["delta", row.upstream, row.probe, int(row.toy), ref, *deltas])
    for reference in comparison.references:
        values = []
        for task in comparison.tasks:
            values += [fmt(reference.scores.get(task)), ""]
        writer.writerow(["paper", reference.label, "finetune", 0, reference.key, *values])
    return buffer.getvalue()


def render_rich(comparison: Comparison, console: Any = None) -> None:
    from rich.markup import escape

    from maebench.tables import new_table, print_table

    header, lines = _table_lines(comparison)
    notes = "".join(f"\n† {note}" for note in protocol_notes(comparison))
    on_test = "".join(f"\n‡ {note}" for note in test_selection_notes(comparison))
    merged = "".join(f"\n- {note}" for note in comparison.notes)
    caption = (PAPER_NOTE + (f"\n{PROTOCOL_NOTE}{notes}" if notes else "")
               + (f"\n{TEST_SELECTION_NOTE}{on_test}" if on_test else "")
               + (f"\n{MERGE_NOTE}{merged}" if merged else ""))
    table = new_table("maebench compare", [escape(name) for name in header], caption=escape(caption))
    for line in lines:
        style = "dim" if line[0].endswith("(paper)") or line[0] == "  protocol" else (
            "italic" if line[0].startswith("  Δ") else None)
        table.add_row(*(escape(cell) for cell in line), style=style)
    print_table(table, console)


def write_png(comparison: Comparison, path: str | Path) -> Path:
    """Grouped bar chart: one group per task, one bar per result row (with std) and per paper row (hatched)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MaebenchError(
            "the PNG chart needs matplotlib, which is not installed: pip install 'maebench[plot]'"
        ) from None
    path = Path(path)
    series = [(row.label, [row.results[t].score if t in row.results else float("nan") for t in comparison.tasks],
               [(row.results[t].std or 0.0) if t in row.results else 0.0 for t in comparison.tasks], False)
              for row in comparison.rows]
    series += [(ref.label, [ref.scores.get(t, float("nan")) for t in comparison.tasks], None, True)
               for ref in comparison.references]
    count = max(1, len(series))
    width = 0.8 / count
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(comparison.tasks) + 0.25 * count), 4.2))
    for i, (label, values, errors, hatched) in enumerate(series):
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(comparison.tasks))]
        ax.bar(xs, values, width, yerr=errors, label=label, capsize=2,
               hatch="//" if hatched else None, alpha=0.55 if hatched else 0.95, edgecolor="black", linewidth=0.4)
    ax.set_xticks(range(len(comparison.tasks)))
    ax.set_xticklabels([TASK_LABELS.get(t, t) for t in comparison.tasks])
    ax.set_ylabel("score (%; AS-20K mAP, others accuracy)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def write_outputs(comparison: Comparison, out_dir: str | Path, *, png: bool = True) -> dict[str, Path | str]:
    """compare.md, compare.csv and (matplotlib permitting) compare.png in `out_dir`; returns what was written, and
    under "png_skipped" why the chart was not."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path | str] = {}
    (out / "compare.md").write_text(render_markdown(comparison), encoding="utf-8")
    written["markdown"] = out / "compare.md"
    (out / "compare.csv").write_text(render_csv(comparison), encoding="utf-8")
    written["csv"] = out / "compare.csv"
    if png:
        try:
            written["png"] = write_png(comparison, out / "compare.png")
        except MaebenchError as err:
            written["png_skipped"] = str(err)
    return written
