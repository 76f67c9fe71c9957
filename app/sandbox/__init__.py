"""A faithful Bitbucket Cloud stand-in for the demo, the tests and the benchmarks.

It is a second, independent reading of Bitbucket's documentation: it imports nothing from
``app.bitbucket``, ``app.checks``, ``app.planner`` or ``app.store`` (enforced by ruff), so a
misunderstanding in one shows up as a failing test instead of cancelling out.
"""
