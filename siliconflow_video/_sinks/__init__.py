"""Destinations other than a local folder: S3-compatible object storage.

``upload_video`` streams one video URL into one object (``_upload``), through the same
transfer loop as ``download_video``; ``S3Store`` and ``MultipartUpload`` (``_s3``) are the
bucket and the resumable upload it fills.

Nothing here imports aiobotocore until a store is opened, so ``import siliconflow_video``
stays light without the ``[s3]`` extra.
"""

from ._s3 import (
    MultipartUpload,
    ObjectInfo,
    PartCallback,
    S3Store,
    StoredObject,
    UploadedPart,
)
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
from ._target import S3Object, S3Target, is_s3_url
from ._upload import ObjectSink, StateCallback, StoredVideo, UploadState, upload_video

__all__ = [
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MIN_PART_SIZE",
    "AddressingStyle",
    "MultipartUpload",
    "ObjectInfo",
    "ObjectSink",
    "S3Object",
    "PartCallback",
    "S3Settings",
    "S3Store",
    "S3Target",
    "StateCallback",
    "StoredObject",
    "StoredVideo",
    "UploadState",
    "UploadedPart",
    "check_part_size",
    "is_s3_url",
    "part_size_for",
    "upload_video",
]
