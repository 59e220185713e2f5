"""The live registry: every model and version of the repository, loaded, swapped and unloaded while
the server runs, with the semantics of Triton's model-repository extension. What the disk holds is
read by service/repository_scan.py.

The registry keeps, per model, the versions it serves, as an immutable mapping
that a load replaces in one assignment: a request resolves its version once and holds that
version's engine until it finishes, so a swap never pulls a model from under a running request,
and the old version's onnxruntime sessions are freed when the last request holding them ends.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Generic, Literal, TypeVar

from service.memory import return_freed_memory
from service.repository_scan import ModelSource, version_key

log = logging.getLogger("vae.service")
T = TypeVar("T")
State = Literal["READY", "UNAVAILABLE", "LOADING"]
READY: Final = "READY"
UNAVAILABLE: Final = "UNAVAILABLE"
LOADING: Final = "LOADING"


class ModelNotFound(LookupError):
    """No such model or version is being served; the message names it."""


class LoadFailed(RuntimeError):
    """A load changed nothing or not everything; the message says what failed and what still serves."""


@dataclass(frozen=True)
class Status:
    name: str
    version: str
    state: State
    reason: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "state": self.state, "reason": self.reason}


@dataclass
class Registry(Generic[T]):
    """The served models. `load_version` turns a version directory into a warmed-up engine (it runs
    in a worker thread and raises with a one-line reason when the version cannot be served)."""

    scan: Callable[[], dict[str, ModelSource]]
    load_version: Callable[[Path], T]
    on_change: Callable[[str, str, str], None] | None = None  # (name, version, state), e.g. for metrics
    on_release: Callable[[T], None] | None = None  # an engine that is no longer served, e.g. to close it
    on_served: Callable[[], object] | None = None  # after every change of what is served (service/memory.py)
    _served: dict[str, dict[str, T]] = field(default_factory=dict)
    _default_version: dict[str, str] = field(default_factory=dict)  # per model: its highest served version
    _status: dict[tuple[str, str], Status] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _fingerprints: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    _unloaded: set[str] = field(default_factory=set)  # unloaded on request, not by a failure

    # ---- reading: no locks, one snapshot per call ----

    def resolve(self, name: str, version: str | None = None) -> tuple[str, T]:
        """(version, engine) for a request: the named version, or the model's highest served one."""
        versions = self._served.get(name)
        if not versions:
            served = ", ".join(sorted(n for n, v in self._served.items() if v)) or "none"
            state = "was unloaded" if name in self._unloaded else "is not loaded"
            raise ModelNotFound(f"model {_shown(name)} {state}; the models served are: {served} (GET /v1/models)")
        if version is None:
            version = self._default_version[name]
        elif version not in versions:
            raise ModelNotFound(
                f"model {_shown(name)} has no loaded version {_shown(version)}; loaded: "
                f"{', '.join(sorted(versions, key=version_key))}"
            )
        return version, versions[version]

    def is_ready(self, name: str, version: str | None = None) -> bool:
        try:
            self.resolve(name, version)
        except ModelNotFound:
            return False
        return True

    def unloaded(self, name: str) -> bool:
        """Unloaded on request (POST .../unload), and not loaded again since."""
        return name in self._unloaded and not self._served.get(name)

    def failed(self, name: str) -> bool:
        """The model was tried and nothing of it serves, and nobody asked for that (no unload)."""
        return name not in self._unloaded and not self._served.get(name) and any(key[0] == name for key in self._status)

    def known(self) -> set[str]:
        """Every model that was tried here: served, failed or unloaded (the index's names, less those only on disk)."""
        return {name for name, _ in self._status}

    def served(self) -> dict[str, list[str]]:
        return {name: sorted(versions, key=version_key) for name, versions in self._served.items() if versions}

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model and version known here or on disk, with its state (Triton's repository index)."""
        statuses = dict(self._status)  # taken on the loop; the disk is read on a worker thread
        try:
            sources = await asyncio.to_thread(self.scan)
        except (OSError, ValueError):  # the disk changed under the scan: report what is known
            sources = {}
        for name, source in sources.items():
            for version in [*source.versions, *source.problems]:
                if (name, version) not in statuses:
                    reason = source.problems.get(version, "not loaded")
                    statuses[(name, version)] = Status(name, version, UNAVAILABLE, reason)
        rows = [s.as_dict() for s in sorted(statuses.values(), key=lambda s: (s.name, version_key(s.version)))]
        return [r for r in rows if r["state"] == READY] if ready_only else rows

    # ---- changing: one load or unload at a time per model ----

    async def load_all(self) -> None:
        """Every model the repository holds; `on_served` once at the end rather than after each."""
        try:
            names = list(await self._scan())
        except LoadFailed as exc:
            log.error("%s", exc)
            return
        on_served, self.on_served = self.on_served, None
        try:
            for name in names:
                try:
                    await self.load(name)
                except (LoadFailed, ModelNotFound) as exc:
                    log.error("%s", exc)
        finally:
            self.on_served = on_served
            if on_served is not None:
                on_served()

    async def load(self, name: str) -> list[Status]:
        """(Re)load the versions the model's policy selects from disk. Each is loaded, hash-checked
        and warmed up before it takes traffic; a version that fails never replaces a working one."""
        async with self._lock(name):
            source = (await self._scan()).get(name)
            if source is None:
                raise ModelNotFound(f"no model {_shown(name)} in the repository")
            self._fingerprints[name] = source.fingerprint
            for version, reason in source.problems.items():
                self._set(Status(name, version, UNAVAILABLE, reason), log_reason=True)
            selected = source.policy.select(list(source.versions))
            for version in selected:
                self._status[(name, version)] = Status(name, version, LOADING)
            loaded, failed = await self._load_versions(name, source, selected)
            serving = self._swap_in(name, source, loaded, failed)
            _check_load(name, source, selected, serving, failed)
            return [self._status[(name, v)] for v in sorted(serving, key=version_key)]

    def _swap_in(self, name: str, source: ModelSource, loaded: dict[str, T], failed: dict[str, str]) -> dict[str, T]:
        """Serve what loaded; a version whose reload failed keeps its working copy, and when nothing
        loaded nothing changes. Returns the versions now served."""
        current = self._served.get(name, {})
        kept = {v: current[v] for v in failed if v in current}
        new = {**kept, **loaded} or dict(current)
        for version in current:
            if version not in new:
                reason = f"unloaded: not selected by the version policy ({source.policy.describe()})"
                self._set(Status(name, version, UNAVAILABLE, reason))
        for version in failed:
            if version in new:
                reason = f"reload failed, still serving the copy loaded earlier: {failed[version]}"
                self._set(Status(name, version, READY, reason))
        self._serve({**self._served, name: new})
        if new:  # until a version serves again, an unloaded model stays "unloaded" (404), not "failed" (503)
            self._unloaded.discard(name)
        return new

    async def unload(self, name: str) -> None:
        async with self._lock(name):
            if name not in self._served and not any(key[0] == name for key in self._status):
                raise ModelNotFound(f"model {_shown(name)} is not loaded")
            versions = self._served.get(name, {})
            self._serve({k: v for k, v in self._served.items() if k != name})
            self._unloaded.add(name)
            for version in versions:
                self._set(Status(name, version, UNAVAILABLE, "unloaded"))

    async def poll(self) -> None:
        """Apply what changed on disk since the last look (Triton's poll mode)."""
        sources = await self._scan()
        for name, source in sources.items():
            if self._fingerprints.get(name) != source.fingerprint:
                try:
                    await self.load(name)
                except (LoadFailed, ModelNotFound) as exc:
                    log.error("%s", exc)
        for name in [n for n in self._served if n not in sources]:
            await self.unload(name)
            self._fingerprints.pop(name, None)

    async def _load_versions(
        self, name: str, source: ModelSource, selected: list[str]
    ) -> tuple[dict[str, T], dict[str, str]]:
        loaded: dict[str, T] = {}
        failed: dict[str, str] = {}
        for version in selected:
            try:
                engine = await asyncio.to_thread(self.load_version, source.versions[version])
            except Exception as exc:  # the loader's errors are the reason shown in the index
                failed[version] = str(exc) or type(exc).__name__
                self._set(Status(name, version, UNAVAILABLE, failed[version]), log_reason=True)
                continue
            loaded[version] = engine
            self._set(Status(name, version, READY))
            _log_release(engine, name, version)
        return loaded, failed

    async def _scan(self) -> dict[str, ModelSource]:
        """The repository as it is on disk, read on a worker thread (it lists directories and reads
        every manifest); a failure to read it is a failed load, not a server error."""
        try:
            return await asyncio.to_thread(self.scan)
        except (OSError, ValueError) as exc:
            raise LoadFailed(f"cannot read the model repository: {exc}") from None

    def _serve(self, served: dict[str, dict[str, T]]) -> None:
        """Replace what is served in one step (requests read it without locks); the default versions
        are computed here, not per request. Every engine no longer served is released."""
        before = [engine for versions in self._served.values() for engine in versions.values()]
        self._default_version = {name: max(versions, key=version_key) for name, versions in served.items() if versions}
        self._served = served
        kept = {id(engine) for versions in served.values() for engine in versions.values()}
        for engine in before:
            if id(engine) not in kept and self.on_release is not None:
                self.on_release(engine)
        if self.on_served is not None:
            self.on_served()

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def _set(self, status: Status, log_reason: bool = False) -> None:
        previous = self._status.get((status.name, status.version))
        self._status[(status.name, status.version)] = status
        if previous != status:
            if self.on_change is not None and (previous is None or previous.state != status.state):
                self.on_change(status.name, status.version, status.state)
            line = f"model {status.name} {status.version}: {status.state}"
            if status.reason:
                line += f" ({status.reason})"
            (log.error if log_reason and status.state == UNAVAILABLE else log.info)("%s", line)


def _check_load(
    name: str, source: ModelSource, selected: list[str], serving: dict[str, Any], failed: dict[str, str]
) -> None:
    """LoadFailed unless every version the policy chose now serves. A broken directory the policy
    would have chosen fails the load, as one that failed to load does."""
    broken = {
        v: source.problems[v]
        for v in source.policy.select([*source.versions, *source.problems])
        if v in source.problems
    }
    if failed or broken:
        served = ", ".join(sorted(serving, key=version_key)) or "nothing"
        reasons = "; ".join(f"{v}: {r}" for v, r in {**broken, **failed}.items())
        raise LoadFailed(f"failed to load {name} {reasons} (serving: {served})")
    if not selected:
        raise LoadFailed(
            f"failed to load {name}: no loadable version in the repository "
            f"(policy {source.policy.describe()}; found {sorted(source.versions) or 'none'})"
        )


def _log_release(engine: object, name: str, version: str) -> None:
    """One log line when the last reference to a version's engine goes and its sessions are freed."""
    try:
        weakref.finalize(engine, _released, name, version)
    except TypeError:  # an engine type without weak references: nothing to report
        pass


def _released(name: str, version: str) -> None:
    return_freed_memory()  # else the RSS keeps every replaced version's high-water mark
    log.info("model %s %s: released", name, version)


def _shown(text: str, most: int = 80) -> str:
    """A client's name or version as a message quotes it: repr'd, cut to `most` characters (a megabyte of
    name would be a megabyte of error message, past what a gRPC status can carry)."""
    return repr(text) if len(text) <= most else repr(text[:most]) + "..."
