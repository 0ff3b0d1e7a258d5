"""fma-s3: FMA's weight store on S3 or any S3-compatible server."""

from fma_s3.config import options_from_env
from fma_s3.store import S3WeightStore

__all__ = ["S3WeightStore", "options_from_env"]
