"""agenerate_video and stream_video: generate_video for async code, driven from a thread.

The run logic is written once, in sync form (``generate.generate_video``). Here it runs in a
worker thread of its own, and cancellation of the awaiting task becomes the sync ``cancel``
event, as filelock's async locks drive its sync ones through an executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from nerfcache.config import Settings
from nerfcache.generate import GenerationResult, generate_video
from nerfcache.progress import ProgressEvent

__all__ = ["agenerate_video", "stream_video"]

_T = TypeVar("_T")


async def agenerate_video(
    audio_path: Path | str,
    character: str,
    output_path: Path | str,
    model_name: str,
    *,
    settings: Settings | None = None,
    test_image: Path | str | None = None,
    timeout: float | None = None,
    check: bool = False,
    on_line: Callable[[str], object] | None = None,
    on_progress: Callable[[ProgressEvent], object | Awaitable[object]] | None = None,
) -> GenerationResult:
    """``generate_video`` for async code: the same parameters and result, never blocking the loop.

    The run (lock waits included) happens in a worker thread. ``on_progress`` may be a plain or
    an async callable; it is called in the event loop. ``on_line`` is called in the worker
    thread. Cancelling the awaiting task (``task.cancel()``, a client disconnect,
    ``asyncio.timeout``) stops the run: its process group is terminated, its staging dir
    removed, its locks released, then ``CancelledError`` propagates.
    """
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    call = functools.partial(
        generate_video,
        audio_path,
        character,
        output_path,
        model_name,
        settings=settings,
        test_image=test_image,
        timeout=timeout,
        check=check,
        cancel=cancel,
        on_line=on_line,
        on_progress=_in_loop(on_progress, loop) if on_progress is not None else None,
    )
    future = _in_thread(call, loop)
    try:
        await _settled(future)
    except asyncio.CancelledError:
        cancel.set()
        # Wait for the worker to kill the run and clean up before letting the cancel through.
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await _settled(future)
        if not future.cancelled():
            future.exception()  # retrieved: the cancellation is what the caller sees
        raise
    return future.result()


async def stream_video(
    audio_path: Path | str,
    character: str,
    output_path: Path | str,
    model_name: str,
    **options: Any,
) -> AsyncGenerator[ProgressEvent, None]:
    """Run like ``agenerate_video`` and yield its ``ProgressEvent``s, for SSE or websockets.

    The last event's stage is ``done`` or ``failed``; errors are raised after it. Leaving the
    ``async for`` early (or cancelling the consumer) cancels the run.
    """
    queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()
    task = asyncio.ensure_future(
        agenerate_video(
            audio_path, character, output_path, model_name, on_progress=queue.put_nowait, **options
        )
    )
    try:
        while not (task.done() and queue.empty()):
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        task.result()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _settled(future: asyncio.Future[Any], wake_s: float = 0.2) -> None:
    """Wait until ``future`` is done, waking the loop every ``wake_s`` seconds meanwhile.

    The wake-ups are for signal handlers that hand their work to the loop with ``call_soon``,
    which does not wake a loop asleep in its selector (only ``call_soon_threadsafe`` does).
    ipykernel's is one: the notebook's stop button sends SIGINT, and for an awaited cell its
    handler schedules the cancel of the cell's task that way (tornado's ``add_callback``, called
    from the loop's own thread). Without a wake-up that cancel waited for the next event, after
    the whole run when the run reports nothing (ipython/ipykernel#881).
    """
    while not future.done():
        await asyncio.wait({future}, timeout=wake_s)


def _in_loop(
    callback: Callable[[ProgressEvent], object | Awaitable[object]], loop: asyncio.AbstractEventLoop
) -> Callable[[ProgressEvent], None]:
    """Wrap ``callback`` so that a worker thread can call it: it runs in ``loop``."""
    pending: set[asyncio.Future[object]] = set()  # the loop keeps only weak references

    def deliver(event: ProgressEvent) -> None:
        def call() -> None:
            outcome = callback(event)
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                pending.add(task)
                task.add_done_callback(pending.discard)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            loop.call_soon_threadsafe(call)

    return deliver


def _in_thread(call: Callable[[], _T], loop: asyncio.AbstractEventLoop) -> asyncio.Future[_T]:
    """Run ``call`` in a thread of its own (runs last minutes: no pool to starve)."""
    future: asyncio.Future[_T] = loop.create_future()

    def settle(result: _T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result = call()
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, error)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=work, name="nerfcache-run", daemon=True).start()
    return future
