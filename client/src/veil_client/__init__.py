"""Client for Veil and the vendor's Cloud Public API: parallel, resumable, retried uploads and downloads.

from veil_client import Client
job = Client("http://127.0.0.1:8000/v1", key).submit("street.jpg", {"enable_lp": True})
job.approve(); job.wait(); job.download("out/")
"""

from .batch import BatchResult, Entry, run_batch, walk
from .client import Client, Job
from .errors import ClientError, CreditsRefused, JobFailed, KeyRefused, NotOffered, TooLarge, Unreachable

__all__ = [
    "BatchResult",
    "Client",
    "ClientError",
    "CreditsRefused",
    "Entry",
    "Job",
    "JobFailed",
    "KeyRefused",
    "NotOffered",
    "TooLarge",
    "Unreachable",
    "run_batch",
    "walk",
]
