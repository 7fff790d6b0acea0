"""Load the daemon configuration from YAML files: every problem at once, each with file, line and path.

A file (or a directory of ``*.yaml``/``*.yml`` files, read in name order) holds one or more YAML
documents: exactly one ``etcdwarden.io/v1alpha1 DaemonConfig`` in all, plus any number of OpenShift
``Backup`` / ``EtcdBackup`` custom resources (also inside a ``v1 List``). ``include`` in the
DaemonConfig pulls in more files. Nothing is accepted loosely: an unknown field, a bad cron line, an
unknown time zone or a repository nobody defined is an error, and all of them are reported together.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from etcdwarden.daemon import crs
from etcdwarden.daemon.config import (
    API_VERSION,
    KIND,
    BackupSettings,
    DaemonConfigDoc,
    RetryPolicy,
    Strict,
    exposure_problem,
    format_duration,
    is_loopback_listen,
)
from etcdwarden.daemon.schedule import Schedule
from etcdwarden.daemon.spec import BackupJob, DaemonConfig, DefragSpec, RotationSpec
from etcdwarden.errors import UsageError

Loc = tuple[str | int, ...]

_HINTS = {
    "password": "passwords are not written in config files: use passwordFile or passwordEnv",
    "cronSchedule": "the field is called schedule",
    "timezone": "the field is called timeZone",
}


@dataclass
class Problem:
    file: str
    line: int | None
    where: str  # document label
    path: str
    message: str

    def __str__(self) -> str:
        pos = f"{self.file}:{self.line}" if self.line else self.file
        parts = [pos, self.where, self.path, self.message]
        return ": ".join(p for p in parts if p)


class ConfigError(UsageError):
    """The configuration is invalid; ``problems`` lists every problem found (exit 2)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        n = len(problems)
        head = f"{n} problem{'s' if n != 1 else ''} in the daemon configuration:"
        super().__init__("\n  ".join([head, *(str(p) for p in problems)]))


def path_text(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known_aliases() -> set[str]:
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, f in model.model_fields.items():
            names.add(f.alias or name)
            for arg in _model_args(f.annotation):
                walk(arg)

    for m in (DaemonConfigDoc, crs.BackupCR, crs.EtcdBackupCR):
        walk(m)
    return names


def _model_args(tp: Any) -> list[type[BaseModel]]:
    import typing

    out: list[type[BaseModel]] = []
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        out.append(tp)
    for a in typing.get_args(tp):
        out.extend(_model_args(a))
    return out


def _message(err: dict[str, Any], aliases: set[str]) -> str:
    kind = err["type"]
    loc = err["loc"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        if key in _HINTS:
            return f"unknown field {key!r}: {_HINTS[key]}"
        close = difflib.get_close_matches(key, sorted(aliases), n=1)
        return f"unknown field {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


class _Node:
    """Line numbers of a composed YAML document, looked up by path."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.node = node

    def line(self, loc: Loc) -> int | None:
        node = self.node
        if node is None:
            return None
        best = node.start_mark.line + 1
        for part in loc:
            nxt: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == part:
                        nxt = v
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                nxt = node.value[part]
            if nxt is None:
                return best
            node = nxt
            best = node.start_mark.line + 1
        return best


def _duplicate_keys(node: yaml.Node, loc: Loc, out: list[tuple[Loc, int, str]]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = str(k.value) if isinstance(k, yaml.ScalarNode) else "?"
            if key in seen:
                out.append(((*loc, key), k.start_mark.line + 1, f"duplicate key {key!r}"))
            seen.add(key)
            _duplicate_keys(v, (*loc, key), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _duplicate_keys(v, (*loc, i), out)


@dataclass
class _Doc:
    file: str
    index: int
    nodes: _Node
    label: str = ""
    index_map: dict[str, list[int]] = field(default_factory=dict)  # valid items of a partial DaemonConfig
    raw_refs: list[tuple[Loc, str]] = field(default_factory=list)  # repositories named by invalid items

    def at(self, section: str, i: int) -> int:
        m = self.index_map.get(section)
        return m[i] if m is not None else i


@dataclass
class _Loader:
    problems: list[Problem] = field(default_factory=list)
    daemon: list[tuple[DaemonConfigDoc, _Doc, Loc]] = field(default_factory=list)
    backups: list[tuple[crs.BackupCR, _Doc, Loc]] = field(default_factory=list)
    singles: list[tuple[crs.EtcdBackupCR, _Doc, Loc]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    aliases: set[str] = field(default_factory=_known_aliases)
    raw_repo_names: set[str] = field(default_factory=set)

    def problem(self, doc: _Doc | None, loc: Loc, message: str, file: str = "") -> None:
        if doc is None:
            self.problems.append(Problem(file, None, "", path_text(loc), message))
            return
        self.problems.append(Problem(doc.file, doc.nodes.line(loc), doc.label, path_text(loc), message))

    # -- files -----------------------------------------------------------------------------------
    def load_path(self, path: Path) -> None:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                self.problem(None, (), "the directory holds no .yaml or .yml file", str(path))
            for p in found:
                self.load_file(p)
        else:
            self.load_file(path)

    def load_file(self, path: Path) -> None:
        name = str(path)
        if str(path.resolve()) in self.files:
            return
        self.files.append(str(path.resolve()))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            self.problem(None, (), f"cannot read: {e.strerror or e}", name)
            return
        loader = yaml.SafeLoader(text)
        index = 0
        try:
            while loader.check_node():
                node = loader.get_node()
                index += 1
                doc = _Doc(name, index, _Node(node))
                dups: list[tuple[Loc, int, str]] = []
                if node is not None:
                    _duplicate_keys(node, (), dups)
                for loc, line, msg in dups:
                    self.problems.append(Problem(name, line, f"document {index}", path_text(loc), msg))
                data = loader.construct_document(node) if node is not None else None
                if data is not None:
                    self.dispatch(data, doc, (), path.parent)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            err_line = mark.line + 1 if mark is not None else None
            self.problems.append(Problem(name, err_line, "", "", f"not valid YAML: {getattr(e, 'problem', e)}"))
        finally:
            loader.dispose()

    # -- documents -------------------------------------------------------------------------------
    def dispatch(self, data: object, doc: _Doc, loc: Loc, base: Path) -> None:
        doc.label = f"document {doc.index}"
        if not isinstance(data, dict):
            self.problem(doc, loc, "a document must be a mapping with apiVersion and kind")
            return
        api, kind = data.get("apiVersion"), data.get("kind")
        name = (data.get("metadata") or {}).get("name") if isinstance(data.get("metadata"), dict) else None
        doc.label = f"document {doc.index} ({kind} {name})" if name else f"document {doc.index} ({kind})"
        if kind == "List" and api == "v1":
            items = data.get("items")
            if not isinstance(items, list):
                self.problem(doc, (*loc, "items"), "a List needs a list of items")
                return
            for i, item in enumerate(items):
                self.dispatch(item, doc, (*loc, "items", i), base)
            return
        model: type[Strict] | None = None
        if (api, kind) == (API_VERSION, KIND):
            model = DaemonConfigDoc
        elif (api, kind) in crs.KINDS:
            model = crs.KINDS[(str(api), str(kind))]
        if model is None:
            expected = {"DaemonConfig": API_VERSION, "Backup": crs.BACKUP_API, "EtcdBackup": crs.ETCDBACKUP_API}
            if kind in expected:
                self.problem(doc, (*loc, "apiVersion"), f"kind {kind} needs apiVersion {expected[str(kind)]}, "
                             f"not {api!r}")
            elif api is None or kind is None:
                self.problem(doc, loc, "missing apiVersion or kind (expected etcdwarden.io/v1alpha1 DaemonConfig, "
                             "config.openshift.io/v1alpha1 Backup or operator.openshift.io/v1alpha1 EtcdBackup)")
            else:
                self.problem(doc, (*loc, "kind"), f"{api} {kind} is not a document etcdwarden reads (expected "
                             "DaemonConfig, Backup or EtcdBackup)")
            return
        try:
            obj = model.model_validate(data)
        except ValidationError as e:
            for err in e.errors():
                err_loc: Loc = (*loc, *err["loc"])
                self.problem(doc, err_loc, _message(dict(err), self.aliases))
            if model is not DaemonConfigDoc:
                return
            # go on with the valid parts, so cross-document problems are reported in the same run
            obj, doc.index_map = _partial(data)
            for section in ("backups", "singleBackups"):
                items = data.get(section)
                for i, item in enumerate(items if isinstance(items, list) else []):
                    if (i not in doc.index_map.get(section, []) and isinstance(item, dict)
                            and isinstance(item.get("repository"), str)):
                        doc.raw_refs.append(((*loc, section, i, "repository"), item["repository"]))
            self.raw_repo_names |= {str(r.get("name")) for r in data.get("repositories") or []
                                    if isinstance(r, dict)}
        if isinstance(obj, DaemonConfigDoc):
            self.daemon.append((obj, doc, loc))
            for i, pattern in enumerate(obj.include):
                full = pattern if Path(pattern).is_absolute() else str(base / pattern)
                matches = sorted(glob.glob(full))
                if not matches and not glob.has_magic(pattern):  # an empty conf.d/*.yaml is fine
                    self.problem(doc, (*loc, "include", i), f"{pattern!r}: no such file")
                for m in matches:
                    self.load_path(Path(m))
        elif isinstance(obj, crs.BackupCR):
            self.backups.append((obj, doc, loc))
        elif isinstance(obj, crs.EtcdBackupCR):
            self.singles.append((obj, doc, loc))

    # -- the whole ---------------------------------------------------------------------------
    def resolve(self, now: dt.datetime) -> DaemonConfig | None:
        if not self.daemon:
            if not self.problems:
                self.problem(None, (), f"no {API_VERSION} {KIND} document found", ", ".join(self.files))
            return None
        for _cfg, doc, loc in self.daemon[1:]:
            first = self.daemon[0][1]
            self.problem(doc, (*loc, "kind"), f"a second DaemonConfig (the first is in {first.file}, "
                         f"document {first.index}); merge them into one")
        cfg, cdoc, cloc = self.daemon[0]
        repos = {}
        for i, r in enumerate(cfg.repositories):
            if r.name in repos:
                self.problem(cdoc, (*cloc, "repositories", cdoc.at("repositories", i), "name"),
                             f"repository {r.name!r} is defined twice")
            repos[r.name] = r
            if r.options:
                opt_loc = (*cloc, "repositories", cdoc.at("repositories", i), "options")
                self._check_options(r.backend_options(), cdoc, opt_loc)
        known = ", ".join(sorted(repos)) or "none"

        def check_repo(name: str, doc: _Doc, loc: Loc) -> None:
            if name not in repos and name not in self.raw_repo_names:
                close = difflib.get_close_matches(name, sorted(repos), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.problem(doc, loc, f"unknown repository {name!r} (defined in the DaemonConfig: {known}){hint}")

        for ref_loc, ref in cdoc.raw_refs:
            check_repo(ref, cdoc, ref_loc)
        tz = cfg.agent.time_zone
        notes: list[str] = []
        self._check_http(cfg, cdoc, cloc, notes)
        backups: list[BackupJob] = []
        seen: dict[str, str] = {}

        def unique(key: str, origin: str, doc: _Doc, loc: Loc) -> None:
            if key in seen:
                self.problem(doc, loc, f"job name {key.split('/', 1)[1]!r} is already used by {seen[key]}")
            seen.setdefault(key, origin)

        for i, b in enumerate(cfg.backups):
            loc = (*cloc, "backups", cdoc.at("backups", i))
            origin = f"{cdoc.file}: {path_text(loc)}"
            check_repo(b.repository, cdoc, (*loc, "repository"))
            job = BackupJob(name=b.name, repository=b.repository, settings=b, origin=origin,
                            schedule=Schedule(b.schedule, b.time_zone or tz), jitter=b.jitter,
                            catch_up=b.catch_up, enabled=b.enabled, retention=b.retention,
                            retry=cfg.agent.retry.merged(b.retry))
            unique(job.key, origin, cdoc, (*loc, "name"))
            self._check_jitter(job.schedule, b.jitter, cdoc, (*loc, "jitter"), now)
            self._note_retry(job.schedule, job.retry, origin, notes, now)
            backups.append(job)
        for cr, doc, loc in self.backups:
            e = cr.spec.etcd
            origin = f"Backup {cr.metadata.name} ({doc.file})"
            enabled = bool(e.schedule)
            if not enabled:
                notes.append(f"{origin}: spec.etcd.schedule is empty (no opinion): no recurring backups")
            elif not e.pvc_name:
                self.problem(doc, (*loc, "spec", "etcd", "pvcName"),
                             f"required: the name of a repository of the DaemonConfig ({known})")
            else:
                check_repo(e.pvc_name, doc, (*loc, "spec", "etcd", "pvcName"))
            # the CR has no retry field: it gets agent.retry (the default: 3 attempts)
            job = BackupJob(name=cr.metadata.name, repository=e.pvc_name, settings=crs_settings(),
                            origin=origin, schedule=Schedule(e.schedule or "@daily", e.time_zone or tz),
                            enabled=enabled, retention=cr.retention(), namespace=cr.metadata.namespace,
                            retry=cfg.agent.retry)
            unique(job.key, origin, doc, (*loc, "metadata", "name"))
            if enabled:
                self._note_retry(job.schedule, job.retry, origin, notes, now)
            backups.append(job)
        singles: list[BackupJob] = []
        for i, s in enumerate(cfg.single_backups):
            loc = (*cloc, "singleBackups", cdoc.at("singleBackups", i))
            origin = f"{cdoc.file}: {path_text(loc)}"
            check_repo(s.repository, cdoc, (*loc, "repository"))
            job = BackupJob(name=s.name, repository=s.repository, settings=s, origin=origin, single=True)
            unique(job.key, origin, cdoc, (*loc, "name"))
            singles.append(job)
        for ecr, doc, loc in self.singles:
            origin = f"EtcdBackup {ecr.metadata.name} ({doc.file})"
            if not ecr.spec.pvc_name:
                self.problem(doc, (*loc, "spec", "pvcName"),
                             f"required: the name of a repository of the DaemonConfig ({known})")
            else:
                check_repo(ecr.spec.pvc_name, doc, (*loc, "spec", "pvcName"))
            job = BackupJob(name=ecr.metadata.name, repository=ecr.spec.pvc_name, settings=crs_settings(),
                            origin=origin, single=True, namespace=ecr.metadata.namespace, uid=ecr.metadata.uid)
            unique(job.key, origin, doc, (*loc, "metadata", "name"))
            singles.append(job)
        defrags: list[DefragSpec] = []
        for i, d in enumerate(cfg.defrag):
            loc = (*cloc, "defrag", cdoc.at("defrag", i))
            origin = f"{cdoc.file}: {path_text(loc)}"
            self._check_defrag(d.rule, cdoc, loc)
            spec = DefragSpec(name=d.name, schedule=Schedule(d.schedule, d.time_zone or tz), options=d,
                              origin=origin, jitter=d.jitter, catch_up=d.catch_up, enabled=d.enabled)
            unique(spec.key, origin, cdoc, (*loc, "name"))
            self._check_jitter(spec.schedule, d.jitter, cdoc, (*loc, "jitter"), now)
            defrags.append(spec)
        rotations: list[RotationSpec] = []
        rot = cfg.encryption_rotation
        if rot is not None:
            loc = (*cloc, "encryptionRotation")
            origin = f"{cdoc.file}: {path_text(loc)}"
            for i, name in enumerate(rot.backups):
                check_repo(name, cdoc, (*loc, "backups", i))
            rspec = RotationSpec(name=rot.name, schedule=Schedule(rot.schedule, rot.time_zone or tz), options=rot,
                                 origin=origin, jitter=rot.jitter, catch_up=rot.catch_up, enabled=rot.enabled)
            unique(rspec.key, origin, cdoc, (*loc, "name"))
            self._check_jitter(rspec.schedule, rot.jitter, cdoc, (*loc, "jitter"), now)
            rotations.append(rspec)
        if self.problems:
            return None
        return DaemonConfig(etcd=cfg.etcd, agent=cfg.agent, election=cfg.election, repositories=repos,
                            backups=tuple(backups), singles=tuple(singles), defrags=tuple(defrags),
                            rotations=tuple(rotations), files=tuple(self.files), notes=tuple(notes))

    def _check_http(self, cfg: DaemonConfigDoc, doc: _Doc, loc: Loc, notes: list[str]) -> None:
        a = cfg.agent
        msg = exposure_problem(a.listen, a.tls is not None, a.insecure_http)
        if msg:
            self.problem(doc, (*loc, "agent", "listen"), msg)
        elif a.tls is None and a.auth is not None and not is_loopback_listen(a.listen):
            notes.append(f"agent.insecureHttp: the bearer token for {a.listen} is sent in clear text (no agent.tls)")

    @staticmethod
    def _note_retry(schedule: Schedule | None, retry: RetryPolicy, origin: str, notes: list[str],
                    now: dt.datetime) -> None:
        if schedule is None or retry.attempts <= 1:
            return
        gap = schedule.shortest_gap(now)
        if retry.backoff >= gap:
            notes.append(f"{origin}: retry backoff {format_duration(retry.backoff)} is not shorter than the "
                         f"schedule's interval ({format_duration(gap)}): a failed run is retried by the next slot "
                         "only")

    def _check_jitter(self, schedule: Schedule | None, jitter: float, doc: _Doc, loc: Loc, now: dt.datetime) -> None:
        if schedule is None or jitter <= 0:
            return
        gap = schedule.shortest_gap(now)
        if jitter >= gap:
            self.problem(doc, loc, f"jitter {jitter:g}s is not shorter than the schedule's interval ({gap:g}s)")

    def _check_options(self, options: dict[str, Any], doc: _Doc, loc: Loc) -> None:
        try:
            from etcdwarden.repository import RepositoryOptions
        except ImportError:  # checked when the repository is opened
            return
        try:
            RepositoryOptions.from_mapping(options)
        except UsageError as e:
            self.problem(doc, loc, str(e))

    def _check_defrag(self, rule: str | None, doc: _Doc, loc: Loc) -> None:
        try:
            from etcdwarden.defrag.rules import compile_rule
        except ImportError:  # the defrag library is optional at load time; the job reports it when run
            return
        if rule is not None:
            try:
                compile_rule(rule)
            except UsageError as e:
                self.problem(doc, (*loc, "rule"), str(e).splitlines()[0])


def _partial(data: dict[str, Any]) -> tuple[DaemonConfigDoc, dict[str, list[int]]]:
    """The valid sections and list items of an invalid DaemonConfig (the invalid ones are reported)."""
    import typing

    from pydantic import TypeAdapter

    values: dict[str, Any] = {}
    index_map: dict[str, list[int]] = {}
    for name, f in DaemonConfigDoc.model_fields.items():
        key = f.alias or name
        if key not in data or name in ("api_version", "kind"):
            continue
        raw = data[key]
        if typing.get_origin(f.annotation) is list:
            adapter: TypeAdapter[Any] = TypeAdapter(typing.get_args(f.annotation)[0])
            good = []
            index_map[key] = []
            for i, item in enumerate(raw if isinstance(raw, list) else []):
                try:
                    good.append(adapter.validate_python(item))
                    index_map[key].append(i)
                except ValidationError:
                    pass
            values[name] = good
        else:
            with contextlib.suppress(ValidationError):
                values[name] = TypeAdapter(Any if f.annotation is None else f.annotation).validate_python(raw)
    return DaemonConfigDoc.model_construct(**values), index_map


def crs_settings() -> BackupSettings:
    return BackupSettings()


def load_config(paths: list[Path] | list[str], now: dt.datetime | None = None) -> DaemonConfig:
    """Read, validate and resolve; raise :class:`ConfigError` listing every problem."""
    ld = _Loader()
    for p in paths:
        path = Path(p)
        if not path.exists():
            ld.problem(None, (), "no such file or directory", str(path))
            continue
        ld.load_path(path)
    cfg = ld.resolve(now or dt.datetime.now(dt.UTC))
    if cfg is None or ld.problems:
        raise ConfigError(ld.problems)
    return cfg
