"""Safe SQL identifiers for the database sinks: parse a user's ``schema.table`` once, always quote.

Why always quote: a table name comes from a DAG author (possibly from Jinja, possibly from a trigger
form), and SQL has no placeholder for identifiers. Quoting every part makes any text a harmless
name; the name is therefore taken literally, case included: ``Results`` is the table
``"Results"``, not PostgreSQL's folded ``results``. An unquoted part that carries SQL syntax
(``results; DROP TABLE x``, a comment, a string quote) is refused all the same: it is an injection
attempt or a mistake, never a name someone meant; a table really named so is written quoted.

Grammar of a name (checked at DAG-parse time by the sinks' constructors):

- one or two parts separated by ``.``: ``table`` or ``schema.table``;
- a part is either bare text without ``"`` or ``.``, or a double-quoted text in which ``""`` stands
  for one ``"`` (so ``"my.schema"."Odd Name"`` works);
- refused: empty parts, more than two parts, an unbalanced or stray ``"``, control characters
  (NUL included: no database accepts it in a name and it is never intended), and SQL syntax in an
  unquoted part (see :data:`SQL_IN_BARE_NAMES`).
"""

from __future__ import annotations

from airflow_provider_zohobulk.errors import SinkConfigurationError

#: Text that ends a statement, starts a comment or a string: refused in an unquoted part of a name.
SQL_IN_BARE_NAMES: tuple[str, ...] = (";", "--", "/*", "*/", "'", "`", "\\")

#: PostgreSQL silently truncates longer names (NAMEDATALEN - 1), which would load into another table.
POSTGRES_MAX_IDENTIFIER_BYTES = 63


def split_table_name(name: str) -> tuple[str | None, str]:
    """Split ``schema.table`` into its unquoted parts; ``(None, table)`` when no schema is given.

    Raises :class:`SinkConfigurationError` for a name outside the grammar in the module docstring.
    """
    if not isinstance(name, str) or not name:
        raise SinkConfigurationError(f"table name must be a non-empty string, got {name!r}")
    bad = next((ch for ch in name if ord(ch) < 0x20 or ord(ch) == 0x7F), None)
    if bad is not None:
        raise SinkConfigurationError(f"table name {name!r} contains the control character {bad!r}")
    parts: list[str] = []
    position = 0
    while True:
        part, position = _read_part(name, position)
        parts.append(part)
        if position == len(name):
            break
        position += 1  # the "." separating parts
        if len(parts) == 2:
            raise SinkConfigurationError(
                f"table name {name!r} has more than two dotted parts; use schema.table (quote a part with \" to "
                "keep a dot in it)"
            )
    if len(parts) == 1:
        return None, parts[0]
    return parts[0], parts[1]


def _read_part(name: str, start: int) -> tuple[str, int]:
    """Read one part starting at ``start``; returns it and the position of the next ``.`` or the end."""
    if start < len(name) and name[start] == '"':
        chars: list[str] = []
        position = start + 1
        while True:
            if position >= len(name):
                raise SinkConfigurationError(f"table name {name!r} has an unbalanced quote")
            if name[position] == '"':
                if name.startswith('""', position):
                    chars.append('"')
                    position += 2
                    continue
                position += 1
                break
            chars.append(name[position])
            position += 1
        if position < len(name) and name[position] != ".":
            raise SinkConfigurationError(
                f"table name {name!r} has text after a closing quote; quote the whole part"
            )
        part = "".join(chars)
    else:
        end = name.find(".", start)
        end = len(name) if end == -1 else end
        part = name[start:end]
        if '"' in part:
            raise SinkConfigurationError(
                f"table name {name!r} has an unbalanced quote; quote a whole part as \"...\" and double a "
                "quote inside it"
            )
        syntax = next((token for token in SQL_IN_BARE_NAMES if token in part), None)
        if syntax is not None:
            raise SinkConfigurationError(
                f"table name {name!r} looks like SQL, not a name (it contains {syntax!r} outside quotes); "
                "if a table really is named so, double-quote that part"
            )
        position = end
    if not part:
        raise SinkConfigurationError(f"table name {name!r} has an empty part")
    return part, position


def quote_ident(part: str, dialect: str) -> str:
    """Quote one identifier part for ``dialect`` (``postgres``, ``duckdb``, ``sqlite``, ``mysql``, ...).

    Double quotes (ANSI) everywhere except MySQL/MariaDB, whose default mode needs backticks.
    PostgreSQL names longer than 63 bytes are refused rather than silently truncated.
    """
    if not part or "\x00" in part:
        raise SinkConfigurationError(f"identifier {part!r} is empty or contains NUL")
    if dialect in ("postgres", "postgresql") and len(part.encode("utf-8")) > POSTGRES_MAX_IDENTIFIER_BYTES:
        raise SinkConfigurationError(
            f"identifier {part!r} is longer than PostgreSQL's {POSTGRES_MAX_IDENTIFIER_BYTES} bytes"
        )
    if dialect in ("mysql", "mariadb"):
        return "`" + part.replace("`", "``") + "`"
    return '"' + part.replace('"', '""') + '"'


def quote_table_name(name: str, dialect: str) -> str:
    """``schema.table`` from a user, validated and quoted as a whole for ``dialect``."""
    schema, table = split_table_name(name)
    quoted_table = quote_ident(table, dialect)
    return quoted_table if schema is None else f"{quote_ident(schema, dialect)}.{quoted_table}"
