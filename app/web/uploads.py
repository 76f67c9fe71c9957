"""Multipart uploads with the size limit enforced while the body is read.

The request body is counted as it streams in: a ``Content-Length`` over the limit is refused before
reading, and a body (chunked or not) that grows past it stops at once (:class:`app.record_input.TooLarge`,
HTTP 413). The file part is spooled to a temporary file on disk (at most 1 MiB in memory) and
then streamed into the evidence folder, so memory stays flat whatever the upload's size.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from app.errors import BadUpload as BadUpload
from app.errors import TooLarge

FORM_OVERHEAD = 64 * 1024  # part headers and the small fields beside the file


async def upload_form(request: Request, max_bytes: int) -> FormData:
    """The form of a multipart upload whose body may be at most ``max_bytes`` plus the fields."""
    limit = max_bytes + FORM_OVERHEAD
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise TooLarge(max_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadUpload("expected multipart/form-data")

    async def limited() -> AsyncGenerator[bytes, None]:
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                raise TooLarge(max_bytes)
            yield chunk

    parser = MultiPartParser(request.headers, limited(), max_files=1, max_fields=10, max_part_size=FORM_OVERHEAD)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise BadUpload(f"expected multipart/form-data ({exc.message})") from None
