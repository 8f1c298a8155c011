"""The streaming core: zip bytes -> members (:mod:`.unzip`) -> Arrow batches of CSV text (:mod:`.decode`).

Plain iterators, no Airflow: each stage pulls from the previous one, so memory stays bounded by a
few blocks whatever the archive's size.
"""

from airflow_provider_zohobulk.stream.decode import iter_csv_batches
from airflow_provider_zohobulk.stream.unzip import UnzipLimits, ZipMember, iter_csv_members, iter_members

__all__ = ["UnzipLimits", "ZipMember", "iter_csv_batches", "iter_csv_members", "iter_members"]
