"""The Bulk Write result: canonical row layout, STATUS normalisation and ERRORS parsing.

(Implementation in progress: the schema below is the contract every sink is written against.)
"""

from __future__ import annotations

import pyarrow as pa

ERROR_TYPE = pa.struct([("code", pa.string()), ("columns", pa.list_(pa.string()))])

CANONICAL_SCHEMA = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("file_name", pa.string(), nullable=False),
        pa.field("row_number", pa.int64(), nullable=False),
        pa.field("record_id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("errors", pa.list_(ERROR_TYPE), nullable=False),
        pa.field("errors_raw", pa.string()),
        pa.field("source", pa.map_(pa.string(), pa.string()), nullable=False),
    ]
)
