"""The product's parts for a CLI one-shot: the store (opened and always closed again) and, around
it, the one aiohttp session, the clients and the worker. The only module beside ``app/main.py``
that owns those libraries for the command line, so ``app/commands.py`` stays free of them."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from app import errors
from app.crypto import Crypto
from app.services import Services, build_services
from app.settings import PostgresURL, Settings
from app.store import Store


def _unusable(path: Path, exc: sqlite3.Error | OSError) -> errors.ConfigError:
    reason = (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)
    return errors.ConfigError(f"LP_DATABASE: cannot use {path}: {reason}")


@asynccontextmanager
async def open_store(settings: Settings, *, existing: bool = False) -> AsyncIterator[Store]:
    """The one way commands open the database; it is always closed again, whatever happens.

    ``existing``: a read-only command refuses a missing file instead of creating an empty database.
    A file that is not an SQLite database (or cannot be opened) is a configuration error (exit 2).
    """
    path = settings.database
    if isinstance(path, PostgresURL):
        try:
            store = await Store.open(path, settings.files_dir)
        except ConnectionError as exc:  # the message names the URL without its password
            raise errors.ConfigError(f"LP_DATABASE: {exc}") from None
    else:
        if existing and not path.is_file():
            raise errors.ConfigError(f"no database at {path} (set LP_DATABASE to the product's database file)")
        try:
            store = await Store.open(path, settings.files_dir)
        except (sqlite3.Error, OSError) as exc:
            raise _unusable(path, exc) from None
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def running(settings: Settings, *, existing: bool = False) -> AsyncIterator[Services]:
    """The product's parts without the HTTP server: store, session, clients, worker.

    Everything opened here is closed on the way out, on success, error or cancellation.
    """
    if settings.secret_key is not None:
        Crypto(settings.secret_key.get_secret_value())  # a bad key is refused before anything is created
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        store = await stack.enter_async_context(open_store(settings, existing=existing))
        yield await build_services(settings, session, store=store)


async def backup(settings: Settings, target: Path) -> None:
    """A consistent copy of the database to ``target`` (a new file), while the product may run."""
    if target.exists():
        raise errors.ConfigError(f"{target}: exists already; choose a new file")
    if isinstance(settings.database, PostgresURL):
        raise errors.ConfigError("LP_DATABASE is a PostgreSQL database: back it up with pg_dump")
    if not settings.database.exists():
        raise errors.ConfigError(f"{settings.database}: no database to back up")
    # Written beside the target under another name and renamed when complete: a backup that fails
    # half-way (disk full) leaves no file that looks like a backup.
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.open("wb").close()
    except OSError as exc:
        raise errors.ConfigError(f"{target}: cannot write a backup there: {exc.strerror or exc}") from None
    try:
        async with open_store(settings) as store:
            await store.db.backup(partial)
        if target.exists():
            raise errors.ConfigError(f"{target}: exists already; choose a new file")
        partial.replace(target)
    except (sqlite3.Error, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise errors.LowerplaneError(f"backup to {target} could not finish: {exc} (nothing was written)") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
