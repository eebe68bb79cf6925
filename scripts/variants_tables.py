"""Print the README's two tables of the digit classifier's variants as Markdown, measured afresh.

Run from the repository root (CPU only, about a minute)::

    PYTHONPATH=src python scripts/variants_tables.py

The tables are the ones the demo's report shows (:func:`shiftlab.experiments.variants.variants_section`): the six
variants side by side, and the trained ``digits_cnn`` converted, before and after fine-tuning, beside the same layers
trained from scratch. The README's "BlurPool and APS, trained" and "Keeping the accuracy" tables are this output;
``tests/test_variants.py`` checks that they agree with what shiftlab measures.
"""

from __future__ import annotations

from shiftlab.experiments.variants import FINETUNE_COLUMNS, run_variants, variants_section
from shiftlab.report.sections import Table


def markdown(table: Table) -> str:
    """``table`` as a Markdown table, the model specs of its first column in backticks (code, as in the README)."""
    lines = ["| " + " | ".join(table.columns) + " |", "| " + " | ".join("---" for _ in table.columns) + " |"]
    for first, *rest in table.rows:
        cells = [f"`{first}`" if first else "", *map(str, rest)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme_tables() -> list[Table]:
    """The side-by-side table and the fine-tuning comparison, as the demo's report has them."""
    tables = variants_section(run_variants()).tables
    return [tables[0], next(table for table in tables if table.columns == list(FINETUNE_COLUMNS))]


def main() -> None:
    print("\n\n".join(markdown(table) for table in readme_tables()))


if __name__ == "__main__":
    main()
