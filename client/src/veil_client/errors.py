"""The errors a person can act on, each with the exit status `veil submit` documents."""

from __future__ import annotations


class ClientError(Exception):
    """Base class; `exit_status` is what `veil submit` exits with when this error decides the run."""

    exit_status = 1


class JobFailed(ClientError):
    """The server refused the file at pricing or failed to process it (`job_status_description` says why)."""


class NotOffered(ClientError):
    """A Veil extension (cancel, job listing) that this server does not offer."""


class KeyRefused(ClientError):
    """401/403: the key is missing, wrong or revoked."""

    exit_status = 3


class CreditsRefused(ClientError):
    """402, or a cost over `max_credits`: the job was not approved and nothing was charged for it."""

    exit_status = 4


class TooLarge(ClientError):
    """413: the file is over the server's upload limit."""

    exit_status = 5


class Unreachable(ClientError):
    """The server did not answer (refused, reset or timed out) after every retry."""

    exit_status = 6
