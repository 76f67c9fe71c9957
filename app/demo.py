"""The ``demo`` command: the sandbox with the sample workspace, read end to end by the client.

It starts the built-in Bitbucket sandbox, reads every piece of data the eight tests need through
the real client over loopback HTTP, and prints what it found. Without ``--once`` the sandbox stays
up until Ctrl-C so it can be explored (``curl -H 'Authorization: Bearer sandbox-acme-token'``).
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp

from app.bitbucket.client import BitbucketClient, Budget, StaticToken
from app.sandbox.serve import running_sandbox
from app.settings import Settings

SAMPLE_TOKEN = "sandbox-acme-token"  # noqa: S105 - the sandbox's published demo credential


def _say(text: str = "") -> None:
    print(text, flush=True)


async def read_workspace(client: BitbucketClient, workspace: str) -> None:
    repos = await client.repositories(workspace)
    _say(f"Workspace {workspace}: {len(repos)} repositories")
    for repo in repos:
        restrictions = await client.branch_restrictions(workspace, repo.slug)
        pipelines = await client.pipelines_config(workspace, repo.slug)
        prs = await client.open_pullrequest_count(workspace, repo.slug)
        last = await client.latest_pipeline(workspace, repo.slug, repo.mainbranch) if repo.mainbranch else None
        state = "never configured" if not pipelines.configured else ("on" if pipelines.enabled else "off")
        build = f", last build #{last.build_number} {last.result}" if last else ""
        _say(
            f"  {repo.full_name:<22} main={repo.mainbranch or '-':<7} restrictions={len(restrictions):<2} "
            f"open PRs={prs} pipelines={state}{build}"
        )
    members = await client.members(workspace)
    _say(f"  {len(members)} members: " + ", ".join(m.user.display_name or m.user.key for m in members))


async def run_demo(settings: Settings, *, port: int, once: bool) -> int:
    async with running_sandbox() as sb, aiohttp.ClientSession() as session:
        _say(f"Bitbucket sandbox running at {sb.api}")
        client = BitbucketClient(
            session, StaticToken(SAMPLE_TOKEN), api_url=sb.api, budget=Budget(settings.budget_per_hour)
        )
        for ws in await client.workspaces():
            await read_workspace(client, ws.slug)
        _say(f"{client.calls()} API calls; granted scopes: {', '.join(sorted(client.granted_scopes or []))}")
        if once:
            return 0
        _say("Sandbox stays up; press Ctrl-C to stop.")
        try:
            await asyncio.Event().wait()  # until Ctrl-C cancels the run
        except asyncio.CancelledError:
            print("stopped", file=sys.stderr)
    return 0
