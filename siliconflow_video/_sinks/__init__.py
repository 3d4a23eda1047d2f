"""Destinations other than a local folder: S3-compatible object storage.

Nothing here imports aiobotocore until a store is opened, so ``import siliconflow_video``
stays light without the ``[s3]`` extra.
"""

from ._s3 import MultipartUpload, PartCallback, S3Store, StoredObject, UploadedPart
from ._settings import (
    DEFAULT_PART_SIZE,
    MAX_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    AddressingStyle,
    S3Settings,
    check_part_size,
    part_size_for,
)
from ._target import S3Target, is_s3_url

__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "AddressingStyle",
    "MultipartUpload",
    "PartCallback",
    "S3Settings",
    "S3Store",
    "S3Target",
    "StoredObject",
    "UploadedPart",
    "check_part_size",
    "is_s3_url",
    "part_size_for",
]
