"""One list+watch cache per worker process: what the kubevirt backend reads instead of polling.

For each watched resource a `Reflector` (client-go's name for it) lists the label-selected objects
in pages (`limit`/`continue`), then watches from the list's resourceVersion and applies the events
to an in-memory store. The rules, as in client-go's reflector and kopf's watcher:
- a watch the server ends (its `timeoutSeconds`, a restart) is resumed from the last
  resourceVersion seen (an event's or a BOOKMARK's), without listing again;
- 410 Gone (the version was compacted away, in the stream as an ERROR event or as the HTTP status;
  or an expired continue token while paging) means events were lost: list again;
- a watch or list that fails otherwise (connection broken, 5xx, 429) is retried after an
  exponential backoff with jitter, from the last resourceVersion.

The backend writes directly (create/patch/delete, with resourceVersion preconditions where it
matters) and feeds each write's answer to `observe`, so its own next read sees it even before the
watch event arrives (read-your-writes inside one process). A store entry is only replaced by a
newer resourceVersion, so a late event never rolls an object back.

The watch streams use the official client's sync API (like every other call of the backend) in
daemon threads of their own, never on the event loop, never taking the API call pool's threads and
never holding the process's exit; a stream is ended from the loop by shutting its socket down,
the kubernetes client's own way.

Objects are slimmed before they are stored (no managedFields; VMs and VMIs keep metadata and
status, NetworkPolicies metadata only): the cache of 1,000 labs stays a few tens of MiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from cluster.kubevirt import labels as L
from cluster.kubevirt.api import (
    NAMESPACES,
    NETWORK_POLICIES,
    SERVICES,
    VIRTUAL_MACHINE_INSTANCES,
    VIRTUAL_MACHINES,
    Gone,
    KubeApi,
    Obj,
    Resource,
    api_error,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

Key = tuple[str | None, str]  # (namespace, name)

WATCH_TIMEOUT = 300  # seconds: the server ends each watch after this (randomised +-20 %), we resume it
STALE_AFTER = 30.0  # seconds a watch may be down before reads stop trusting the cache (go direct)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0


def in_daemon_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Run a blocking call in a thread of its own, as a future of the running loop. A daemon
    thread: a watch blocked in a read must never hold the process's exit (an executor's threads
    are joined at exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the loop, raised where the future is awaited
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="kube-watch", daemon=True).start()
    return future


def _meta(obj: Obj) -> Obj:
    return obj.get("metadata") or {}


def version_newer(candidate: str | None, than: str | None) -> bool:
    """Whether resourceVersion `candidate` is newer than `than`. Versions are opaque strings to
    clients in principle; every API server we know hands out etcd revisions (integers), and
    comparing them is what keeps a late watch event from rolling back our own newer write.
    Unparseable versions: the candidate wins (the watch is ordered, so the latest event is newest)."""
    if not than:
        return True
    if not candidate:
        return False
    try:
        return int(candidate) > int(than)
    except ValueError:
        return True


def slim(resource: Resource, obj: Obj) -> Obj:
    """The part of an object the backend reads (a cache of thousands of VMIs must stay small)."""
    meta = {k: v for k, v in _meta(obj).items() if k != "managedFields"}
    if resource in (VIRTUAL_MACHINES, VIRTUAL_MACHINE_INSTANCES):
        return {"metadata": meta, "status": obj.get("status") or {}}
    if resource == NETWORK_POLICIES:
        return {"metadata": meta}
    if resource == SERVICES:
        return {"metadata": meta, "spec": obj.get("spec") or {}}
    return {**obj, "metadata": meta}


@dataclass
class ReflectorStats:
    lists: int = 0  # complete lists (the first one and every relist)
    pages: int = 0
    watches: int = 0  # watch requests opened
    gone: int = 0  # 410s seen (each leads to a relist)
    errors: int = 0  # failed lists/watches (each followed by a backoff)


@dataclass
class Reflector:
    api: KubeApi
    resource: Resource
    selector: str
    notify: Callable[[Obj], None]
    page_size: int = 500
    watch_timeout: int = WATCH_TIMEOUT
    store: dict[Key, Obj] = field(default_factory=dict)
    version: str = ""  # last resourceVersion seen; "" means "list first"
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    broken_since: float | None = None  # loop time the current outage began
    stats: ReflectorStats = field(default_factory=ReflectorStats)
    _stop_stream: Callable[[], None] | None = None
    _closing: bool = False

    @property
    def name(self) -> str:
        return self.resource.plural

    # --- the store ------------------------------------------------------------------------------
    def observe(self, obj: Obj) -> None:
        """An object as the API answered it (watch event or our own write): kept if newer."""
        meta = _meta(obj)
        key = (meta.get("namespace"), str(meta.get("name")))
        held = self.store.get(key)
        if held is not None and not version_newer(meta.get("resourceVersion"), _meta(held).get("resourceVersion")):
            return
        if not L.matches(meta.get("labels"), self.selector):
            # It left our selection (a real API server sends DELETED for that; our own write may not).
            if self.store.pop(key, None) is not None:
                self.notify(obj)
            return
        self.store[key] = slim(self.resource, obj)
        self.notify(obj)

    def deleted(self, namespace: str | None, name: str, when: str) -> None:
        """Our own delete went through: the object is going (a namespace terminates for a while;
        the watch's DELETED event removes it). Kept with a deletionTimestamp until then."""
        held = self.store.get((namespace, name))
        if held is not None and not _meta(held).get("deletionTimestamp"):
            self.store[(namespace, name)] = {**held, "metadata": {**_meta(held), "deletionTimestamp": when}}
            self.notify(held)

    def forget(self, obj: Obj) -> None:
        meta = _meta(obj)
        if self.store.pop((meta.get("namespace"), str(meta.get("name"))), None) is not None:
            self.notify(obj)

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self.store.get((namespace, name))

    def items(self) -> list[Obj]:
        return list(self.store.values())

    # --- list and watch ---------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = BACKOFF_FIRST
        loop = asyncio.get_running_loop()
        while True:
            try:
                if not self.version:
                    await self._list()
                await self._watch()
                backoff = BACKOFF_FIRST  # a watch that ran and ended: resume at once
                self.broken_since = None
            except Gone as exc:
                self.stats.gone += 1
                log.info("cache %s: %s; listing again", self.name, exc)
                self.version = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the cache must outlive any API trouble
                self.stats.errors += 1
                if self.broken_since is None:
                    self.broken_since = loop.time()
                delay = min(backoff, BACKOFF_MAX) * random.uniform(0.5, 1.0)
                backoff = min(backoff * 2, BACKOFF_MAX)
                log.warning("cache %s: %s; again in %.1f s", self.name, exc, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        items: list[Obj] = []
        token: str | None = None
        version = ""
        while True:
            page, page_version, token = await in_daemon_thread(
                functools.partial(self.api.list_page, self.resource, None, self.selector,
                                  limit=self.page_size, continue_token=token),
            )
            self.stats.pages += 1
            items += page
            version = version or page_version
            if not token:
                break
        self.stats.lists += 1
        old, self.store = self.store, {}
        for item in items:
            self.observe(item)
        for key, obj in old.items():  # gone while we were not watching
            if key not in self.store:
                self.notify(obj)
        self.version = version
        self.broken_since = None
        self.synced.set()

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Obj | None] = asyncio.Queue()

        def on_event(event: Obj) -> None:  # in the stream's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        def on_open(stop: Callable[[], None]) -> None:  # in the stream's thread
            self._stop_stream = stop
            if self._closing:  # closed while the request was on its way
                stop()
            loop.call_soon_threadsafe(self._watching)

        # Spread the watches' ends so the five reconnects of a process do not come at once.
        timeout = max(1, int(self.watch_timeout * random.uniform(0.8, 1.2)))
        self.stats.watches += 1
        stream = in_daemon_thread(
            functools.partial(self.api.watch, self.resource, self.selector, self.version,
                              timeout_seconds=timeout, on_event=on_event, on_open=on_open),
        )
        stream.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                self._apply(event)
        finally:
            if not stream.done():
                self.stop_stream()
            with contextlib.suppress(Exception):
                await asyncio.shield(stream)
            self._stop_stream = None
        stream.result()  # the stream's own error (HTTP status, broken connection), if any

    def _watching(self) -> None:
        """The watch is open again: the outage (if any) is over, the store is being kept current."""
        self.broken_since = None

    def _apply(self, event: Obj) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 500)
            raise api_error(code, str(obj.get("message") or obj.get("reason") or ""), "watch",
                            f"{self.resource.kind} *")
        version = _meta(obj).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            self.observe(obj)
        elif kind == "DELETED":
            self.forget(obj)
        elif kind != "BOOKMARK":
            log.debug("cache %s: event type %r ignored", self.name, kind)
        if version:
            self.version = str(version)

    def stop_stream(self, *, closing: bool = False) -> None:
        self._closing = self._closing or closing
        if self._stop_stream is not None:
            self._stop_stream()


class ClusterCache:
    """The reflectors of the five resources and per-namespace change notifications."""

    RESOURCES = (NAMESPACES, VIRTUAL_MACHINES, VIRTUAL_MACHINE_INSTANCES, SERVICES, NETWORK_POLICIES)

    def __init__(self, api: KubeApi, *, page_size: int = 500, watch_timeout: int = WATCH_TIMEOUT,
                 stale_after: float = STALE_AFTER) -> None:
        self.api = api
        self.stale_after = stale_after
        selector = L.managed_selector()
        self.reflectors = {
            resource: Reflector(api, resource, selector, self._notify, page_size=page_size,
                                watch_timeout=watch_timeout)
            for resource in self.RESOURCES
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    # --- life ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start listing and watching on the running loop (idempotent)."""
        if self._tasks:
            return
        for reflector in self.reflectors.values():
            self._tasks.append(asyncio.create_task(reflector.run(), name=f"kube-cache-{reflector.name}"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for reflector in self.reflectors.values():
            reflector.stop_stream(closing=True)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def wait_synced(self, seconds: float) -> bool:
        """Start if needed; True once every resource was listed (False after `seconds`)."""
        self.start()
        try:
            async with asyncio.timeout(seconds):
                for reflector in self.reflectors.values():
                    await reflector.synced.wait()
        except TimeoutError:
            return False
        return True

    @property
    def fresh(self) -> bool:
        """Listed, and no watch down for longer than `stale_after`: safe to answer from."""
        if not self._tasks or not all(r.synced.is_set() for r in self.reflectors.values()):
            return False
        now = asyncio.get_running_loop().time()
        return all(r.broken_since is None or now - r.broken_since < self.stale_after
                   for r in self.reflectors.values())

    # --- reads and write-through ---------------------------------------------------------------
    def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        return self.reflectors[resource].get(namespace, name)

    def items(self, resource: Resource, selector: str | None = None) -> list[Obj]:
        items = self.reflectors[resource].items()
        return items if selector is None else [o for o in items if L.matches(_meta(o).get("labels"), selector)]

    def observe(self, resource: Resource, obj: Obj | None) -> None:
        if obj and resource in self.reflectors and _meta(obj).get("name"):
            self.reflectors[resource].observe(obj)

    def deleted(self, resource: Resource, namespace: str | None, name: str) -> None:
        """After our own delete: a namespace is Terminating until the watch says it is gone; an
        object inside one (Service, NetworkPolicy) is simply dropped."""
        reflector = self.reflectors.get(resource)
        if reflector is None:
            return
        if resource == NAMESPACES:
            reflector.deleted(namespace, name, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        elif (held := reflector.get(namespace, name)) is not None:
            reflector.forget(held)

    # --- change notifications ------------------------------------------------------------------
    def _notify(self, obj: Obj) -> None:
        meta = _meta(obj)
        where = meta.get("namespace") or meta.get("name")  # a namespace is its own key
        for waiter in self._waiters.get(str(where), ()):
            waiter.set()

    async def wait_change(self, namespaces: Iterable[str], seconds: float) -> bool:
        """Wait until an object in (or being) one of the namespaces changes; False on timeout."""
        waiter = asyncio.Event()
        keys = list(namespaces)
        for key in keys:
            self._waiters[key].add(waiter)
        try:
            async with asyncio.timeout(seconds):
                await waiter.wait()
            return True
        except TimeoutError:
            return False
        finally:
            for key in keys:
                self._waiters[key].discard(waiter)
                if not self._waiters[key]:
                    del self._waiters[key]

    def stats(self) -> dict[str, ReflectorStats]:
        return {r.name: r.stats for r in self.reflectors.values()}

