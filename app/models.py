"""Value types shared by layers: a parsed webhook delivery, and later events, fetches, results.

Pure: no I/O.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Delivery(BaseModel):
    """What we keep of one Bitbucket webhook delivery: ids and the hints the planner needs.

    Never a commit message, an author line or a diff: only names and ids.
    """

    model_config = ConfigDict(frozen=True)

    event_key: str
    request_uuid: str
    hook_uuid: str
    attempt: int
    repository_uuid: str | None = None
    repository_full_name: str | None = None
    workspace: str | None = None
    actor_account_id: str | None = None
    branches: tuple[str, ...] = ()
    branches_created: tuple[str, ...] = ()
    branches_deleted: tuple[str, ...] = ()
    pullrequest_id: int | None = None
    pullrequest_state: str | None = None
    changed_fields: tuple[str, ...] = ()
    project_key: str | None = None
