"""Load the daemon configuration from YAML files: every problem at once, each with file, line and path.

A file (or a directory of ``*.yaml``/``*.yml`` files, read in name order) holds one or more YAML
documents: exactly one ``etcdwarden.io/v1alpha1 DaemonConfig`` in all, plus any number of OpenShift
``Backup`` / ``EtcdBackup`` custom resources (also inside a ``v1 List``). ``include`` in the
DaemonConfig pulls in more files. Nothing is accepted loosely: an unknown field, a bad cron line, an
unknown time zone or a repository nobody defined is an error, and all of them are reported together.

This module reads: files, YAML documents, each validated on its own against its model (the valid
parts of an invalid DaemonConfig are kept, so problems across documents show in the same run).
:mod:`.resolve` then checks across documents and builds the :class:`~.spec.DaemonConfig`; problems
and their places are :mod:`.problems`'.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from etcdwarden.daemon import crs
from etcdwarden.daemon.config import API_VERSION, KIND, DaemonConfigDoc, Strict
from etcdwarden.daemon.problems import (
    ConfigError,
    Document,
    LineIndex,
    Loc,
    Problem,
    duplicate_keys,
    locate,
    path_text,
)
from etcdwarden.daemon.resolve import Documents, resolve
from etcdwarden.daemon.spec import DaemonConfig

__all__ = ["ConfigError", "load_config"]

_HINTS = {
    "password": "passwords are not written in config files: use passwordFile or passwordEnv",
    "cronSchedule": "the field is called schedule",
    "timezone": "the field is called timeZone",
}


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


@dataclass
class _Loader:
    problems: list[Problem] = field(default_factory=list)
    docs: Documents = field(default_factory=Documents)
    aliases: set[str] = field(default_factory=_known_aliases)

    def problem(self, doc: Document | None, loc: Loc, message: str, file: str = "") -> None:
        self.problems.append(locate(doc, loc, message, file))

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
        if str(path.resolve()) in self.docs.files:
            return
        self.docs.files.append(str(path.resolve()))
        text = self.read_text(path)
        if text is None:
            return
        try:
            loader = yaml.SafeLoader(text)  # refuses control characters at once
        except yaml.YAMLError as e:
            self.problems.append(Problem(name, None, "", "", f"not valid YAML: {getattr(e, 'problem', None) or e}"))
            return
        index = 0
        try:
            while loader.check_node():
                node = loader.get_node()
                index += 1
                doc = Document(name, index, LineIndex(node))
                dups: list[tuple[Loc, int, str]] = []
                if node is not None:
                    duplicate_keys(node, (), dups)
                for loc, line, msg in dups:
                    self.problems.append(Problem(name, line, f"document {index}", path_text(loc), msg))
                data = loader.construct_document(node) if node is not None else None
                if data is not None:
                    self.dispatch(data, doc, (), path.parent)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            err_line = mark.line + 1 if mark is not None else None
            self.problems.append(Problem(name, err_line, "", "", f"not valid YAML: {getattr(e, 'problem', e)}"))
        except RecursionError:
            self.problems.append(Problem(name, None, "", "", "nested too deeply to be a configuration"))
        finally:
            loader.dispose()

    def read_text(self, path: Path) -> str | None:
        """The file's text, or ``None`` with a problem recorded (not a regular file, unreadable, not UTF-8)."""
        name = str(path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            self.problem(None, (), f"cannot read: {e.strerror or e}", name)
            return None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                self.problem(None, (), "not a regular file (a FIFO, socket or device?): name a YAML file", name)
                return None
            try:
                data = f.read()
            except OSError as e:
                self.problem(None, (), f"cannot read: {e.strerror or e}", name)
                return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            self.problems.append(Problem(name, line, "", "", f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                                         f"{e.start}): save the file as UTF-8"))
            return None

    # -- documents -------------------------------------------------------------------------------
    def dispatch(self, data: object, doc: Document, loc: Loc, base: Path) -> None:
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
            for section in ("backups", "singleBackups", "drills"):
                items = data.get(section)
                for i, item in enumerate(items if isinstance(items, list) else []):
                    if (i not in doc.index_map.get(section, []) and isinstance(item, dict)
                            and isinstance(item.get("repository"), str)):
                        doc.raw_refs.append(((*loc, section, i, "repository"), item["repository"]))
            self.docs.raw_repo_names |= {str(r.get("name")) for r in data.get("repositories") or []
                                    if isinstance(r, dict)}
        if isinstance(obj, DaemonConfigDoc):
            self.docs.daemon.append((obj, doc, loc))
            for i, pattern in enumerate(obj.include):
                full = pattern if Path(pattern).is_absolute() else str(base / pattern)
                matches = sorted(glob.glob(full))
                if not matches and not glob.has_magic(pattern):  # an empty conf.d/*.yaml is fine
                    self.problem(doc, (*loc, "include", i), f"{pattern!r}: no such file")
                for m in matches:
                    self.load_path(Path(m))
        elif isinstance(obj, crs.BackupCR):
            self.docs.backups.append((obj, doc, loc))
        elif isinstance(obj, crs.EtcdBackupCR):
            self.docs.singles.append((obj, doc, loc))

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


def load_config(paths: list[Path] | list[str], now: dt.datetime | None = None) -> DaemonConfig:
    """Read, validate and resolve; raise :class:`ConfigError` listing every problem."""
    ld = _Loader()
    for p in paths:
        path = Path(p)
        if not path.exists():
            ld.problem(None, (), "no such file or directory", str(path))
            continue
        ld.load_path(path)
    cfg = resolve(ld.docs, ld.problems, now or dt.datetime.now(dt.UTC))
    if cfg is None or ld.problems:
        raise ConfigError(ld.problems)
    return cfg
