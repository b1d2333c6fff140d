"""The market's view of ledger jobs: a pending job as the scheduler's `JobRequest`.
The job records and rules themselves are the ledger's (`consensus.ledger.job_records`,
`consensus.ledger.jobs`), re-exported here for the market's callers."""

from __future__ import annotations

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
from consensus.market.scheduler import JobRequest

__all__ = [
    "JOB_KINDS", "CancelJob", "JobRecord", "JobStatus", "SubmitJob", "check_terms",
    "expire_jobs", "get_job", "job_id", "job_request", "jobs_of", "live_at", "pending_jobs",
]  # fmt: skip


def job_request(job: bytes, record: JobRecord) -> JobRequest:
    """The scheduler's view of a job: what it needs, with "" / 0 meaning "any"."""
    terms = record.terms
    return JobRequest(
        job_id=job,
        submitter=record.submitter,
        gpus_needed=terms.gpus,
        min_memory_mib=terms.min_memory_mib,
        gpu_model=terms.gpu_model or None,
        region=terms.region or None,
        max_rtt_ms=terms.max_rtt_ms or None,
        redundancy=terms.redundancy,
        max_price_per_gpu_hour=terms.max_price_per_gpu_hour,
    )
