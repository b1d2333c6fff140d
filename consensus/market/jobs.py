"""The market's view of ledger jobs: a pending job as the scheduler's `JobRequest`.
The job records and rules themselves are the ledger's (`consensus.ledger.job_records`,
`consensus.ledger.jobs`), re-exported here for the market's callers."""

from __future__ import annotations

from consensus.ledger.job_flow import job_request
from consensus.ledger.job_records import (
    JOB_KINDS,
    CancelJob,
    JobRecord,
    JobStatus,
    SubmitJob,
    job_id,
)
from consensus.ledger.jobs import (
    check_terms,
    expire_jobs,
    get_job,
    jobs_of,
    live_at,
    pending_jobs,
)

__all__ = [
    "JOB_KINDS", "CancelJob", "JobRecord", "JobStatus", "SubmitJob", "check_terms",
    "expire_jobs", "get_job", "job_id", "job_request", "jobs_of", "live_at", "pending_jobs",
]  # fmt: skip
