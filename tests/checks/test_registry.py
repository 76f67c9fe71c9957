"""A test is one module: everything else about it derives from the registry.

Each test under ``app/checks/`` declares what the rest of the product needs (``Check``); the
settings' valid ids, the planner's sets, the scope report, evidence, alert texts and the OpenAPI
enums are read from the registry. These tests hold that in place: no test id is written anywhere
in ``app/`` outside its own module, each test has its own test module here, and a new module
dropped into ``app/checks/`` is picked up everywhere without another edit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from app import checks
from app.checks.base import EVIDENCE_SCOPES, FETCH_KINDS
from app.planner import Fetch

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"


def _module_of(check_id: str) -> str:
    return check_id.replace("-", "_")


def test_every_check_module_documents_itself() -> None:
    modules = sorted(p.stem for p in (APP / "checks").glob("*.py") if "\nCHECK = Check(" in p.read_text())
    assert sorted(_module_of(c) for c in checks.REGISTRY) == modules
    for check in checks.REGISTRY.values():
        assert check.doc.startswith("Pure.") and "Control" in check.doc


def test_each_check_is_named_only_in_its_own_module_and_tested_in_its_own_test_module() -> None:
    sources = [p for p in APP.rglob("*") if p.is_file() and p.suffix in (".py", ".html", ".js", ".json", ".css")]
    assert len(sources) > 50
    for check_id in checks.REGISTRY:
        own = APP / "checks" / f"{_module_of(check_id)}.py"
        assert own.is_file(), f"{check_id} is not defined in {own.relative_to(ROOT)}"
        elsewhere = [str(p.relative_to(ROOT)) for p in sources if p != own and check_id in p.read_text()]
        assert elsewhere == [], f"{check_id} is named outside its module: derive it from the registry"
        assert (ROOT / "tests" / "checks" / f"test_{_module_of(check_id)}.py").is_file()


def test_what_a_check_declares_is_well_formed() -> None:
    for c in checks.REGISTRY.values():
        assert c.subject_type in ("repository", "member", "workspace"), c.id
        assert c.severity in ("critical", "high", "medium", "low"), c.id
        assert c.fetches <= FETCH_KINDS, c.id
        assert set(c.evidence) <= EVIDENCE_SCOPES, c.id
        assert set(c.scopes) <= set(checks.SCOPE_PURPOSES), c.id
        assert c.fix and c.settings_link, c.id
        assert c.fix_text("acme", "acme/api") and c.link("https://bitbucket.org", "acme", "acme/api").startswith(
            "https"
        )
    # Every fetch kind a test may declare is one the planner and the fetch layer know.
    for kind in FETCH_KINDS:
        assert Fetch(kind, "acme").key.startswith(kind + ":")
    assert set(checks.REGISTRY) == set(checks.CHECK_IDS)


NEW_CHECK = '''"""Pure. ``repo-has-description``: a repository should say what it is.

Control: the repository's description is not empty.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.checks.base import Check, Context, WorkspaceFacts, repo_result
from app.models import Result


def evaluate(ws: WorkspaceFacts, ctx: Context) -> Sequence[Result]:
    return [repo_result(CHECK, f, "pass", "described") for f in ws.repositories]


CHECK = Check(
    id="repo-has-description",
    title="Repositories should be described",
    severity="low",
    subject_type="repository",
    default_on=False,
    evaluate=evaluate,
    doc=__doc__ or "",
    order=9,
    fetches=frozenset({"repo", "restrictions"}),
    scopes=("repository", "repository:admin"),
    permissions=("repository admin",),
    fix="Describe {subject} in Repository settings.",
    settings_link="{web_url}/{subject}/admin",
    evidence=("workspace",),
)
'''

PROBE = """
import json
from app import checks, planner, evidence
from app.notify.rules import how_to_fix, subject_url
from app.models import Result
from app.settings import Settings
from app.web import openapi

doc = json.dumps(openapi.document())
s = Settings.from_env({"LP_CHECKS_ENABLED": "repo-has-description"}, env_file=None)
r = Result(check="repo-has-description", severity="low", workspace="acme", subject_type="repository",
           subject_key="{r1}", subject="acme/api", status="fail", message="m")
print(json.dumps({
    "last": checks.CHECK_IDS[-1],
    "default_off": "repo-has-description" not in Settings.from_env({}, env_file=None).enabled_checks,
    "enabled": "repo-has-description" in s.enabled_checks,
    "repo": "repo-has-description" in planner.REPO_CHECKS,
    "branch": "repo-has-description" in planner.BRANCH_CHECKS,
    "member": "repo-has-description" in planner.MEMBER_CHECKS,
    "scope": "repo-has-description" in checks.SCOPE_NEEDS["repository:admin"][0],
    "evidence": "repo-has-description" in evidence.CHECKS,
    "openapi": doc.count('"repo-has-description"'),
    "fix": how_to_fix(r),
    "url": subject_url(r, "https://bitbucket.org"),
}))
"""


def test_adding_a_check_is_adding_one_module(tmp_path: Path) -> None:
    """A copy of the product with one more module in app/checks/ and no other edit: the new test is
    a valid setting, in the planner's sets, the scope report, evidence, alerts and the OpenAPI enums."""
    shutil.copytree(APP, tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "app" / "checks" / "repo_has_description.py").write_text(NEW_CHECK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LP_")} | {"PYTHONPATH": str(tmp_path)}
    out = subprocess.run(  # noqa: S603 - our own interpreter on a fixed script
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["last"] == "repo-has-description"
    assert got["default_off"] and got["enabled"]
    assert got["repo"] and got["branch"] and not got["member"] and got["scope"] and got["evidence"]
    assert got["openapi"] >= 4  # the check enums of findings, history, exceptions and evidence
    assert got["fix"] == "Describe acme/api in Repository settings."
    assert got["url"] == "https://bitbucket.org/acme/api/admin"
