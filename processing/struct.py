"""Structured-data (STRUCT slot) linearization: tables and triples to text, OFASys-compatible.

OFASys's `table` preprocessor (`preprocessor/default/struct.py`) turns a table given as a list of rows into text by
stripping every cell, joining the cells of a row with `" : "` and the rows with `" | "`; the result is then handled as
a TEXT slot (so `max_length` truncates BPE tokens downstream, not cells here). This module does the same and accepts
more input forms:

- a list of rows (`[["name", "age"], ["ann", 3]]`): the first row is the header unless `header=` is given, and is
  emitted as is, exactly as OFASys does;
- a list of records (`[{"name": "ann", "age": 3}, ...]`): the keys of the first record form the header row;
- a dict of columns (`{"name": ["ann"], "age": [3]}`): the keys form the header row.

The header row is emitted first. Graphs are lists of `(subject, relation, object)` triples (DART's `tripleset`) and
are serialized like a header-less three-column table, `"s : r : o | s : r : o"`, which is exactly what OFASys's DART
task feeds its `table` preprocessor.

OFASys also cleans every cell (its `get_nodes`: parentheses and double quotes deleted, commas and underscores turned
into spaces) and, for DART's relation column (`col_type` `c:k:c`), lower-cases relations and turns underscores into
spaces. That clean-up changes the content, so it is opt-in here: `ofasys_clean=True`.

Separators inside cells are not escaped (OFASys does not escape either). Cells may be strings, numbers, booleans
(`str()` of them) or None (an empty cell); anything else is a `TypeError`. OFASys lower-cases every STRUCT value;
here that is the `uncased` option (the `uncased` slot attribute), off by default so that nothing is lost silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from numbers import Number
from typing import Any

import numpy as np

__all__ = ["StructPreprocessor"]

# OFASys's clean-up of table cells and triple nodes (`get_nodes`): these characters are deleted, these become spaces.
_NODE_DELETE = str.maketrans("", "", '()"')
_NODE_SPACE = str.maketrans({",": " ", "_": " "})
_PARENS_DELETE = str.maketrans("", "", "()")


def _ofasys_node(text: str) -> str:
    """OFASys's cell ("node") clean-up: drop parentheses and double quotes, commas and underscores to spaces."""
    return text.translate(_NODE_DELETE).translate(_NODE_SPACE).strip()


def _ofasys_relation(text: str) -> str:
    """OFASys's relation clean-up: drop parentheses, lower-case, whitespace runs and underscores to single spaces.

    OFASys also runs a camel-case splitter, but only after lower-casing, so it never splits anything; and it joins the
    underscore-separated parts with one space each, so a doubled underscore gives a doubled space (kept here).
    """
    text = "_".join(text.translate(_PARENS_DELETE).split()).lower()
    return " ".join(text.split("_")).strip()


class StructPreprocessor:
    """Linearize tables and triples into the flat text OFASys feeds a STRUCT slot.

    Args:
        row_separator (`str`, *optional*, defaults to `" | "`): Text between rows (OFASys `row_seperator`).
        col_separator (`str`, *optional*, defaults to `" : "`): Text between cells of a row (OFASys `col_seperator`).
        strip_cells (`bool`, *optional*, defaults to `True`): Strip surrounding whitespace from every cell, as OFASys.
    """

    def __init__(self, row_separator: str = " | ", col_separator: str = " : ", strip_cells: bool = True):
        if not isinstance(row_separator, str) or not isinstance(col_separator, str):
            raise TypeError("row_separator and col_separator must be strings")
        if row_separator == "" or col_separator == "":
            raise ValueError("row_separator and col_separator must not be empty: rows and cells would run together")
        self.row_separator = row_separator
        self.col_separator = col_separator
        self.strip_cells = strip_cells

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serializable dict (inverse of `from_dict`)."""
        return {
            "row_separator": self.row_separator,
            "col_separator": self.col_separator,
            "strip_cells": self.strip_cells,
        }

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> StructPreprocessor:
        """Build a preprocessor from `to_dict()` output; unknown keys are an error."""
        unknown = sorted(set(config) - {"row_separator", "col_separator", "strip_cells"})
        if unknown:
            raise ValueError(f"Unknown StructPreprocessor config key(s): {unknown}")
        return cls(**config)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"

    def __call__(self, value: Any, **kwargs: Any) -> str:
        """Alias of `linearize`."""
        return self.linearize(value, **kwargs)

    def linearize(
        self,
        value: Any,
        *,
        header: Sequence[Any] | bool | None = None,
        uncased: bool = False,
        max_cells: int | None = None,
        ofasys_clean: bool = False,
        where: str | None = None,
    ) -> str:
        """Serialize a table to text: header row first, cells joined by `col_separator`, rows by `row_separator`.

        Args:
            value:
                A list of rows (lists/tuples), a list of records (dicts with the same keys), or a dict of columns
                (sequences of equal length).
            header (sequence, `bool` or `None`, *optional*):
                `None`/`True`: the default header (first row of a list of rows; keys of records or columns).
                A sequence: for a list of rows, the column names, emitted first, and every given row is data; for
                records or columns, the columns to emit, in this order. `False`: emit no header row (for a list of
                rows this only means row 0 is not checked as a header; the text is the same as with `None`).
            uncased (`bool`, *optional*, defaults to `False`): Lower-case the result (OFASys always does).
            max_cells (`int`, *optional*):
                Keep only as many whole rows (header included) as fit in this many cells. A first row larger than
                `max_cells` is an error rather than an empty result.
            ofasys_clean (`bool`, *optional*, defaults to `False`):
                Apply OFASys's cell clean-up to every cell: delete parentheses and double quotes, turn commas and
                underscores into spaces.
            where (`str`, *optional*): Location prefix for error messages, e.g. `"row 3, column 'table'"`.

        Returns:
            The linearized table.
        """
        prefix = f"{where}: " if where else ""
        if header is not None and not isinstance(header, bool):
            if isinstance(header, (str, bytes)) or not isinstance(header, Sequence) or len(header) == 0:
                raise ValueError(f"{prefix}header must be a non-empty list of column names, True, False or None")
            header = list(header)
        if isinstance(value, Mapping):
            rows = self._column_table(value, header, prefix)
        elif isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise TypeError(
                f"{prefix}a table must be a list of rows, a list of records (dicts) or a dict of columns, "
                f"got {type(value).__name__}"
            )
        elif len(value) == 0:
            raise ValueError(f"{prefix}table is empty (no rows)")
        elif isinstance(value[0], Mapping):
            rows = self._record_table(value, header, prefix)
        else:
            rows = self._row_table(value, header, prefix)
        if ofasys_clean:
            rows = [[_ofasys_node(cell) for cell in row] for row in rows]
        return self._join(rows, uncased=uncased, max_cells=max_cells, prefix=prefix)

    def linearize_triples(
        self,
        triples: Sequence[Sequence[Any]],
        *,
        uncased: bool = False,
        max_cells: int | None = None,
        ofasys_clean: bool = False,
        where: str | None = None,
    ) -> str:
        """Serialize `(subject, relation, object)` triples as `"s : r : o | s : r : o"` (DART tripleset style).

        Args:
            triples: A non-empty sequence of 3-item sequences (tuples or lists, as DART's `tripleset`).
            uncased (`bool`, *optional*, defaults to `False`): Lower-case the result (OFASys always does).
            max_cells (`int`, *optional*): Keep only as many whole triples as fit in this many cells.
            ofasys_clean (`bool`, *optional*, defaults to `False`):
                Apply OFASys's DART clean-up (`col_type` `c:k:c`): subjects and objects lose parentheses and double
                quotes and have commas and underscores turned into spaces; relations lose parentheses, are
                lower-cased and have underscores and whitespace runs turned into spaces.
            where (`str`, *optional*): Location prefix for error messages.

        Returns:
            The linearized triples.
        """
        prefix = f"{where}: " if where else ""
        if isinstance(triples, (str, bytes, Mapping)) or not isinstance(triples, Sequence):
            raise TypeError(
                f"{prefix}triples must be a list of (subject, relation, object), got {type(triples).__name__}"
            )
        if len(triples) == 0:
            raise ValueError(f"{prefix}no triples given (empty list)")
        rows = []
        for index, triple in enumerate(triples):
            if isinstance(triple, (str, bytes, Mapping)) or not isinstance(triple, Sequence) or len(triple) != 3:
                raise ValueError(
                    f"{prefix}triple {index} must be a (subject, relation, object) sequence of 3 items, got {triple!r}"
                )
            cells = [self._cell(cell, f"{prefix}triple {index}, item {pos}") for pos, cell in enumerate(triple)]
            if ofasys_clean:
                cells = [_ofasys_node(cells[0]), _ofasys_relation(cells[1]), _ofasys_node(cells[2])]
            rows.append(cells)
        return self._join(rows, uncased=uncased, max_cells=max_cells, prefix=prefix)

    def _cell(self, cell: Any, location: str) -> str:
        """Render one cell as text, or raise naming its location."""
        if cell is None:
            text = ""
        elif isinstance(cell, str):
            text = cell
        elif isinstance(cell, np.generic) and cell.dtype.kind in "biuf":
            text = str(cell.item())
        elif isinstance(cell, Number) and not isinstance(cell, complex):
            text = str(cell)
        else:
            raise TypeError(
                f"{location}: a table cell must be a string, a real number, a bool or None, got "
                f"{type(cell).__name__} ({cell!r:.60})"
            )
        return text.strip() if self.strip_cells else text

    def _row_table(self, value: Sequence[Any], header: list[Any] | bool | None, prefix: str) -> list[list[str]]:
        """List-of-rows form. Row numbers in messages index `value` (an explicit header is called "the header")."""
        named = [("the header", header)] if isinstance(header, list) else []
        named += [(f"row {index}", row) for index, row in enumerate(value)]
        width = None
        rows = []
        for name, row in named:
            if isinstance(row, (str, bytes, Mapping)) or not isinstance(row, Sequence):
                raise TypeError(f"{prefix}{name} must be a list or tuple of cells, got {type(row).__name__}")
            if len(row) == 0:
                raise ValueError(f"{prefix}{name} is empty (0 cells)")
            if width is None:
                width, first_name = len(row), name
            elif len(row) != width:
                raise ValueError(f"{prefix}ragged table: {name} has {len(row)} cells but {first_name} has {width}")
            rows.append([self._cell(cell, f"{prefix}{name}, column {col}") for col, cell in enumerate(row)])
        return rows

    def _record_table(self, value: Sequence[Any], header: list[Any] | bool | None, prefix: str) -> list[list[str]]:
        """List-of-records form: every record must have the keys of record 0."""
        keys: list[Any] = []
        for index, record in enumerate(value):
            if not isinstance(record, Mapping):
                raise TypeError(
                    f"{prefix}row {index} is a {type(record).__name__} but row 0 is a record (dict); "
                    "all rows must be records"
                )
            if len(record) == 0:
                raise ValueError(f"{prefix}row {index} is an empty record (no keys)")
            if index == 0:
                keys = list(record)
            elif set(record) != set(keys):
                missing = [k for k in keys if k not in record]
                extra = [k for k in record if k not in keys]
                raise ValueError(
                    f"{prefix}ragged table: row {index} has different keys from row 0 "
                    f"(missing {missing}, extra {extra})"
                )
        columns = self._select_columns(keys, header, prefix)
        rows = [] if header is False else [[self._cell(c, f"{prefix}header") for c in columns]]
        for index, record in enumerate(value):
            rows.append([self._cell(record[c], f"{prefix}row {index}, column {c!r}") for c in columns])
        return rows

    def _column_table(self, value: Mapping[Any, Any], header: list[Any] | bool | None, prefix: str) -> list[list[str]]:
        """Dict-of-columns form: every column must have as many values as the first."""
        if len(value) == 0:
            raise ValueError(f"{prefix}table is empty (a dict with no columns)")
        num_rows, first_name = None, None
        for name, column in value.items():
            if isinstance(column, (str, bytes, Mapping)) or not isinstance(column, (Sequence, np.ndarray)):
                raise TypeError(
                    f"{prefix}column {name!r} must be a list of cells (dict-of-columns table), "
                    f"got {type(column).__name__}"
                )
            if num_rows is None:
                num_rows, first_name = len(column), name
            elif len(column) != num_rows:
                raise ValueError(
                    f"{prefix}ragged table: column {name!r} has {len(column)} values but column {first_name!r} "
                    f"has {num_rows}"
                )
        if num_rows == 0:
            raise ValueError(f"{prefix}table is empty: its columns have no values")
        columns = self._select_columns(list(value), header, prefix)
        rows = [] if header is False else [[self._cell(c, f"{prefix}header") for c in columns]]
        for index in range(num_rows):
            rows.append([self._cell(value[c][index], f"{prefix}row {index}, column {c!r}") for c in columns])
        return rows

    @staticmethod
    def _select_columns(keys: list[Any], header: list[Any] | bool | None, prefix: str) -> list[Any]:
        if not isinstance(header, list):
            return keys
        unknown = [c for c in header if c not in keys]
        if unknown:
            raise ValueError(f"{prefix}header names column(s) {unknown} that the table does not have (it has {keys})")
        return header

    def _join(self, rows: list[list[str]], *, uncased: bool, max_cells: int | None, prefix: str) -> str:
        if max_cells is not None:
            if isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells <= 0:
                raise ValueError(f"{prefix}max_cells must be a positive integer, got {max_cells!r}")
            if len(rows[0]) > max_cells:
                raise ValueError(
                    f"{prefix}max_cells={max_cells} is smaller than the first row ({len(rows[0])} cells); "
                    "nothing would be left"
                )
            kept, used = [], 0
            for row in rows:
                if used + len(row) > max_cells:
                    break
                kept.append(row)
                used += len(row)
            rows = kept
        # OFASys strips each joined row too, which drops the separator's space next to an empty edge cell.
        row_texts = (self.col_separator.join(row) for row in rows)
        text = self.row_separator.join(row.strip() if self.strip_cells else row for row in row_texts)
        return text.lower() if uncased else text
