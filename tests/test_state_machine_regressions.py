"""Counterexamples the differential state machine found, kept as plain regression tests.

Each test replays a shrunk sequence of steps of :class:`tests.test_state_machine.ProductVsReference`;
every step compares every stored result with the reference evaluator, so a test fails at the first
step where the product disagrees with checks.md. Repositories are picked by index in slug order
(``api``, ``web`` at the start; ``legacy``, ``tools`` in the other workspace).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.test_state_machine import ProductVsReference

pytestmark = [pytest.mark.statemachine, pytest.mark.state_machine]


@pytest.fixture
def machine() -> Iterator[ProductVsReference]:
    state = ProductVsReference()
    try:
        state.start(min_approvals=1, strict=False)
        yield state
    finally:
        state.teardown()


def test_empty_repository_transferred_in_is_not_applicable_for_pipelines(machine: ProductVsReference) -> None:
    """Found: an empty repository read ``fail`` for pipelines-enabled (checks.md: not_applicable)."""
    machine.transfer_in(fault=None, pick=1)  # "tools", which has no main branch
    machine.trigger_full(fault=None)


def test_emptied_repository_is_not_applicable_for_pipelines(machine: ProductVsReference) -> None:
    machine.switch_pipelines(enabled=True, pick=1)
    machine.empty_repo(pick=0)
    machine.trigger_full(fault=None)


def test_external_entry_without_owner_is_unknown(machine: ProductVsReference) -> None:
    """Found: a service-account or external entry passed without an owner."""
    machine.import_personnel(
        rows=[{"n": 1, "linked": True, "kind": "external", "status": "active", "days": None, "owner": None}]
    )
    machine.trigger_members(fault=None)


def test_offboarding_ahead_passes_until_its_day(machine: ProductVsReference) -> None:
    """Found: an offboarding scheduled for later failed at once (``offboarded_on`` was ignored)."""
    machine.import_personnel(
        rows=[{"n": 2, "linked": True, "kind": "service-account", "status": "offboarded", "days": 10, "owner": None}]
    )
    machine.import_personnel(
        rows=[{"n": 3, "linked": False, "kind": "employee", "status": "offboarded", "days": 5, "owner": None}]
    )
    machine.move_clock(days=7)
    machine.trigger_members(fault=None)
    machine.move_clock(days=7)
    machine.trigger_full(fault=None)


def test_import_refuses_a_date_without_offboarded_status(machine: ProductVsReference) -> None:
    """Found: ``offboarded_on`` with ``status=active`` (in the future) was accepted."""
    machine.import_personnel(
        rows=[{"n": 5, "linked": False, "kind": "service-account", "status": "active", "days": 33, "owner": None}]
    )


def test_evidence_expiry_longer_than_the_maximum_is_refused(machine: ProductVsReference) -> None:
    """Found: an explicit evidence expiry beyond LP_EVIDENCE_MAX_AGE_DAYS was accepted."""
    machine.add_evidence(check="workspace-mfa-enforced", member=None, days=100)
    machine.trigger_full(fault=None)


def test_exception_longer_than_a_year_is_refused(machine: ProductVsReference) -> None:
    machine.add_exception(check="repo-classified", days=366, pick=1)


def test_exception_follows_the_renamed_repository_only(machine: ProductVsReference) -> None:
    """An exception is keyed by the repository's uuid: it follows a rename and never covers a new
    repository that takes the old name."""
    machine.add_exception(check="branch-protection-enforced", days=30, pick=1)  # web
    machine.rename_repo(name="docs", fault=None, pick=1)
    machine.create_repo(name="web", project=None, empty=False, fault=None)
    machine.trigger_full(fault=None)


def test_credential_without_account_scope(machine: ProductVsReference) -> None:
    """Found: without ``account`` the whole pass crashed; a repository that had left stayed listed."""
    machine.transfer_out(fault=None, pick=1)
    machine.toggle_scope(scope="account")
    machine.trigger_full(fault=None)
    machine.trigger_members(fault=None)


def test_report_does_not_cover_a_member_who_left_and_came_back(machine: ProductVsReference) -> None:
    machine.add_evidence(check="member-mfa-enabled", member=None, days=None)
    machine.toggle_member(account="acct-2")  # leaves
    machine.trigger_members(fault=None)
    machine.toggle_member(account="acct-2")  # comes back
    machine.trigger_members(fault=None)


def test_review_group_approvals_count_as_peer_review(machine: ProductVsReference) -> None:
    machine.add_restriction(
        kind="require_review_group_approvals_to_merge",
        by_model=False,
        pattern="main",
        branch_type="development",
        value=1,
        pick=1,
    )
    machine.trigger_full(fault=None)


def test_failed_metadata_read_leaves_the_results_stale(machine: ProductVsReference) -> None:
    """Not a counterexample: the fault rule pinned on one case (a rename whose repository read
    fails keeps every result of that repository as it was, marked stale)."""
    machine.rename_repo(name="docs", fault=("repository", 503), pick=1)
    machine.trigger_full(fault=None)


def test_repository_deleted_after_it_was_created_is_retired(machine: ProductVsReference) -> None:
    """Found (soak run): ``repo:created`` and ``repo:deleted`` of one repository by one actor carry
    the same body; the receiver's duplicate check hashed the body alone, so the deletion was taken
    for a duplicate of the creation and dropped: the repository's results stayed."""
    machine.create_repo(empty=False, fault=None, name="svc", project="CORE")
    machine.delete_repo(fault=None, pick=1)  # svc


def test_exception_for_a_member_who_left_is_accepted(machine: ProductVsReference) -> None:
    """Found (soak run): once a member list without them was read, an exception for a member who
    had left was refused as "no member the product has seen", though the product had recorded
    results for them (checks.md: only a subject never seen is refused); while the list could not
    be read, the same exception was accepted."""
    machine.toggle_member(account="acct-2")  # leaves
    machine.trigger_members(fault=None)
    machine.add_exception(check="offboarded-access-removed", days=0, pick=1)  # acct-2


def test_evidence_for_a_member_who_left_is_accepted_and_covers_them_when_back(machine: ProductVsReference) -> None:
    """The same for member evidence (one resolver): it is recorded and covers them if they return."""
    machine.toggle_member(account="acct-3")  # leaves
    machine.trigger_members(fault=None)
    machine.add_evidence(check="member-mfa-enabled", member="acct-3", days=None)
    machine.toggle_member(account="acct-3")  # comes back
    machine.trigger_members(fault=None)


def test_exception_names_the_repository_that_has_the_name_now(machine: ProductVsReference) -> None:
    """Found by the soak (seed 707): ``acme/api`` transferred out, ``web`` renamed to ``api``, then
    an exception for ``acme/api``: it must cover the repository named so now (checks.md: keyed by
    uuid, resolved when recorded), not the one that left with the name."""
    machine.transfer_out(fault=None, pick=0)
    machine.rename_repo(fault=None, name="api", pick=0)
    machine.add_exception(check="repo-classified", days=0, pick=0)


def test_classify_by_name_takes_the_repository_that_has_the_name_now(machine: ProductVsReference) -> None:
    """The same for ``classify acme/web`` when the repository that left with the name is listed
    after the one that took it (the product picked the last one listed)."""
    from app import actions

    machine.transfer_out(fault=None, pick=1)  # web leaves; the product reads that in the next pass
    machine.rename_repo(fault=None, name="web", pick=0)  # api takes the name, read at once
    [now_web] = [r.uuid for r in machine.repos() if r.slug == "web"]
    done = machine.run(actions.classify(machine.product.services, "acme/web", "production", "cli"))
    assert done.uuid == now_web


def test_exception_by_a_new_name_the_product_could_not_read(machine: ProductVsReference) -> None:
    """Found by the soak (seed 707), a model error: ``web`` renamed to ``core-tools`` while the
    repository read answers 500, then an exception for ``acme/core-tools``. The product has not
    read that name and refuses it as unknown (checks.md: resolved when recorded, from what was
    read); the reference now accepts that refusal, and otherwise the key must be web's."""
    machine.rename_repo(fault=("repository", 500), name="core-tools", pick=1)
    machine.add_exception(check="repo-classified", days=0, pick=1)
    machine.trigger_full(fault=None)
    machine.add_exception(check="repo-classified", days=3, pick=1)  # read by the pass: accepted


def test_member_list_refused_after_a_personnel_import_then_failing(machine: ProductVsReference) -> None:
    """Found by the soak (seed 707): the ``account`` scope taken away, then a personnel import whose
    new email reads the member list again (403: data, the member tests are ``unknown`` naming the
    scope), then a full pass whose member read fails. Only the email-link tests followed the 403,
    so 2SV results stood as ``fail`` from the old list, and the failed read, with no list to name
    them by, left them neither unknown nor stale (checks.md "A fetch that fails")."""
    machine.toggle_scope(scope="account")
    machine.import_personnel(
        rows=[{"n": 1, "linked": False, "kind": "employee", "status": "active", "days": None, "owner": None}]
    )
    machine.trigger_full(fault=("members", 500))


def test_main_branch_moved_while_the_repository_read_answers_429(machine: ProductVsReference) -> None:
    """Found by make test's examples (a model error, on main too): the webhook's read answered 429,
    so the event is deferred (re-queued for the pause), not failed; the branch results stand
    unmarked until its retry, as the first comparison already allowed and the second did not."""
    machine.move_main_branch(fault=("repository", 429), main="develop", pick=0)
    machine.trigger_full(fault=None)


def test_first_push_while_the_restrictions_answer_429_defers_the_whole_repository(
    machine: ProductVsReference,
) -> None:
    """Found by the soak (seed 629983919, a model error): the push's reads stop at the restrictions'
    429 and the repository is deferred whole, so its Pipelines configuration is never read before
    the retry and pipelines-enabled stands not_applicable, unmarked, while its event is queued;
    the full pass then gives the reference's answer."""
    machine.switch_pipelines(enabled=True, pick=0)
    machine.empty_repo(pick=0)
    machine.trigger_full(fault=None)
    machine.first_push(fault=("branch-restrictions", 429), pick=0)
    machine.trigger_full(fault=None)


def test_repository_transferred_in_a_second_time_is_read_again(machine: ProductVsReference) -> None:
    """Found by the soak (seed 448249513, on both stores): ``repo:transfer`` carries no time, so the
    second transfer of a repository into the workspace has the first's byte-identical body; the
    receiver's (hook, body) deduplication, meant for Bitbucket's retries of one delivery, dropped it
    as a duplicate, and the repository had no result until the next full pass. (In the soak's
    example the first transfer's read had failed, so its retry was still to come.) Deliveries are
    now deduplicated by X-Request-UUID alone (schema 7)."""
    machine.transfer_in(fault=None, pick=0)  # "legacy"
    machine.transfer_out(fault=None, pick=1)  # "legacy" (api, legacy, web)
    machine.trigger_full(fault=None)
    machine.transfer_in(fault=None, pick=0)
