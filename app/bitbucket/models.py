"""pydantic models of what the product keeps from Bitbucket responses.

Pure. Each ``from_api`` reads the SPEC shape leniently: unknown fields are ignored (Bitbucket adds
fields the document omits, such as a repository's ``slug`` and ``workspace``), missing optional
ones become None. Nothing here holds source, commits or diffs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


def _d(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _s(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Workspace(_Model):
    """A workspace the credential sees (``/user/workspaces``: SPEC ``workspace_access``)."""

    slug: str
    uuid: str | None = None
    name: str | None = None
    administrator: bool | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Workspace:
        ws = _d(raw.get("workspace")) or raw
        admin = raw.get("administrator")
        return cls(
            slug=str(ws.get("slug")),
            uuid=_s(ws.get("uuid")),
            name=_s(ws.get("name")),
            administrator=admin if isinstance(admin, bool) else None,
        )


class User(_Model):
    """An account (SPEC ``account``/``user``)."""

    uuid: str | None = None
    account_id: str | None = None
    display_name: str | None = None
    nickname: str | None = None
    has_2fa_enabled: bool | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> User:
        two_fa = raw.get("has_2fa_enabled")
        return cls(
            uuid=_s(raw.get("uuid")),
            account_id=_s(raw.get("account_id")),
            display_name=_s(raw.get("display_name")),
            nickname=_s(raw.get("nickname")) or _s(raw.get("username")),
            has_2fa_enabled=two_fa if isinstance(two_fa, bool) else None,
        )

    @property
    def key(self) -> str:
        """The member's subject key: account_id, else uuid (docs/checks.md "Subjects")."""
        return self.account_id or self.uuid or ""


class Repository(_Model):
    """Repository metadata (SPEC ``repository``; ``slug``/``workspace`` are real but undocumented)."""

    uuid: str
    full_name: str
    slug: str
    name: str
    workspace: str
    is_private: bool | None = None
    language: str | None = None
    mainbranch: str | None = None
    project_key: str | None = None
    project_name: str | None = None
    updated_on: str | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Repository:
        full_name = str(raw.get("full_name") or "")
        ws_slug = _s(_d(raw.get("workspace")).get("slug")) or full_name.partition("/")[0]
        slug = _s(raw.get("slug")) or full_name.partition("/")[2]
        project = _d(raw.get("project"))
        private = raw.get("is_private")
        return cls(
            uuid=str(raw.get("uuid") or ""),
            full_name=full_name,
            slug=slug,
            name=_s(raw.get("name")) or slug,
            workspace=ws_slug,
            is_private=private if isinstance(private, bool) else None,
            language=_s(raw.get("language")),
            mainbranch=_s(_d(raw.get("mainbranch")).get("name")),
            project_key=_s(project.get("key")),
            project_name=_s(project.get("name")),
            updated_on=_s(raw.get("updated_on")),
        )


class BranchRestriction(_Model):
    """One branch restriction (SPEC ``branchrestriction``)."""

    id: int | None = None
    kind: str
    branch_match_kind: str = "glob"
    pattern: str | None = None
    branch_type: str | None = None
    value: int | None = None
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> BranchRestriction:
        users = tuple(
            _s(u.get("nickname")) or _s(u.get("display_name")) or _s(u.get("uuid")) or "?"
            for u in raw.get("users") or []
            if isinstance(u, dict)
        )
        groups = tuple(
            _s(g.get("slug")) or _s(g.get("name")) or "?" for g in raw.get("groups") or [] if isinstance(g, dict)
        )
        value = raw.get("value")
        return cls(
            id=raw.get("id") if isinstance(raw.get("id"), int) else None,
            kind=str(raw.get("kind")),
            branch_match_kind=_s(raw.get("branch_match_kind")) or "glob",
            pattern=raw.get("pattern") if isinstance(raw.get("pattern"), str) else None,
            branch_type=_s(raw.get("branch_type")),
            value=value if isinstance(value, int) and not isinstance(value, bool) else None,
            users=users,
            groups=groups,
        )


class BranchType(_Model):
    kind: str
    prefix: str


class BranchingModel(_Model):
    """A repository's branching model (SPEC ``branching_model``).

    ``production_name`` is None when the production branch is disabled (the key is absent).
    """

    development_name: str | None = None
    development_use_mainbranch: bool = False
    production_name: str | None = None
    production_use_mainbranch: bool = False
    branch_types: tuple[BranchType, ...] = ()

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> BranchingModel:
        dev = _d(raw.get("development"))
        prod = _d(raw.get("production"))
        prod_enabled = bool(prod) and prod.get("enabled", True) is not False
        return cls(
            development_name=_s(dev.get("name")) or _s(_d(dev.get("branch")).get("name")),
            development_use_mainbranch=bool(dev.get("use_mainbranch")),
            production_name=(_s(prod.get("name")) or _s(_d(prod.get("branch")).get("name")) if prod_enabled else None),
            production_use_mainbranch=bool(prod.get("use_mainbranch")) if prod_enabled else False,
            branch_types=tuple(
                BranchType(kind=str(t.get("kind")), prefix=str(t.get("prefix")))
                for t in raw.get("branch_types") or []
                if isinstance(t, dict) and t.get("prefix")
            ),
        )

    @property
    def production_enabled(self) -> bool:
        return self.production_name is not None or self.production_use_mainbranch


class PipelinesConfig(_Model):
    """``pipelines_config``: whether Pipelines is enabled; ``configured`` False on 404."""

    enabled: bool
    configured: bool = True


class Pipeline(_Model):
    """The newest pipeline on a branch (SPEC ``pipeline``), reduced to its outcome."""

    uuid: str | None = None
    build_number: int | None = None
    state: str | None = None
    result: str | None = None
    created_on: str | None = None
    completed_on: str | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Pipeline:
        state = _d(raw.get("state"))
        result = _d(state.get("result")) or _d(state.get("stage"))
        number = raw.get("build_number")
        return cls(
            uuid=_s(raw.get("uuid")),
            build_number=number if isinstance(number, int) else None,
            state=_s(state.get("name")),
            result=_s(result.get("name")),
            created_on=_s(raw.get("created_on")),
            completed_on=_s(raw.get("completed_on")),
        )


class Member(_Model):
    """A workspace member (``/workspaces/{ws}/members``), with a role from ``/permissions``."""

    user: User
    email: str | None = None
    permission: str | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Member:
        user_raw = _d(raw.get("user"))
        perm = _s(raw.get("permission"))
        return cls(user=User.from_api(user_raw), email=_s(user_raw.get("email")), permission=perm)


class Webhook(_Model):
    """A webhook subscription (SPEC ``webhook_subscription``); never carries the secret."""

    uuid: str
    url: str
    description: str | None = None
    subject_type: str | None = None
    active: bool = True
    events: tuple[str, ...] = ()
    secret_set: bool | None = None

    @classmethod
    def from_api(cls, raw: dict[str, Any]) -> Webhook:
        secret_set = raw.get("secret_set")
        return cls(
            uuid=str(raw.get("uuid") or ""),
            url=str(raw.get("url") or ""),
            description=_s(raw.get("description")),
            # Older recorded hooks carry only ``subject.type`` (fixture hook_drone-go-scm_testdata.json).
            subject_type=_s(raw.get("subject_type")) or _s(_d(raw.get("subject")).get("type")),
            active=bool(raw.get("active", True)),
            events=tuple(sorted(str(e) for e in raw.get("events") or [])),
            secret_set=secret_set if isinstance(secret_set, bool) else None,
        )
