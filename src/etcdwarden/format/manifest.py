"""The backup manifest (``backup_<ts>.json``): its typed model, the one validator, :func:`load` and :func:`dump`.

A set of files is a backup only once its manifest exists: the manifest is the last object written
and the first deleted. It records everything restore, retention and drills rely on: the tool, the
cluster and member, etcd's versions, revision and raft position, the ``snapshot status`` figures,
the sha256 and size of every file, compression and encryption, the encryption-at-rest key names in
use, and how the backup was verified. A manifest is a claim made at backup time: whatever relies on
a backup later re-checks the files against it.

Format versions (the ``format`` field):

1. written by etcdwarden 0.1 (until issue 12). Read through :mod:`.migrate`: a version-1 file
   without ``format``, ``timestamp``, ``snapshot`` or ``verified`` still reads (they are derived from
   the file name and the ``files`` map, and ``verified`` is then false).
2. the same shape, validated on write and read; adds ``hash_kv`` (the member's ``HashKV`` at the
   snapshot revision, written only when the writer measured it). A version-2 manifest must name the
   tool, creation time, cluster, member, etcd versions, revision and verification. Optional fields
   added since, without a new format version (older readers keep them): ``resources.static_pods``
   (OpenShift's static pod revision directories in the bundle).

A manifest of a newer format than this etcdwarden knows is refused (:class:`ManifestTooNew`):
guessing at a newer writer's meaning could restore the wrong thing. Fields this version does not
know are kept (and written back by :func:`dump`), so a newer writer may add optional fields without
a new format version.

:func:`load` raises :class:`ManifestError` naming the first problem: not JSON, a field of the wrong
type, a file name that is not one of this backup's (:mod:`.names`), a snapshot named twice, ...
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints, ValidationError

from etcdwarden.errors import EtcdwardenError
from etcdwarden.format import migrate
from etcdwarden.format.names import TS, Kind, is_id, parse

FORMAT = 2

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
HexId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{1,16}$")]


class ManifestError(EtcdwardenError):
    """A manifest that cannot be used: not JSON, not a manifest, or inconsistent (the message names the first
    problem). The files it describes are not a usable backup until it is fixed or replaced."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class ManifestTooNew(ManifestError):
    """The manifest was written by a newer etcdwarden, in a format this one does not know."""


class _Part(BaseModel):
    # strict: a JSON string is not an int, a bool is not a number; extra: fields of newer writers are kept
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


class Tool(_Part):
    name: str
    version: str


class Member(_Part):
    id: HexId
    name: str
    endpoint: str | None = None
    was_leader: bool | None = None


class EtcdVersions(_Part):
    server_version: str | None = None
    member_versions: list[str] = Field(default_factory=list)
    storage_version: str | None = None


class StatusFigures(_Part):
    """What ``etcdutl snapshot status -w json`` prints for the snapshot (its key names on disk)."""

    hash: Count
    revision: Count
    total_key: Count = Field(alias="totalKey")
    total_size: Count = Field(alias="totalSize")


class HashKV(_Part):
    """The source member's ``HashKV`` at the snapshot revision (what a restored member must reproduce), and
    ``keys``: the live keys it served at that revision (``Range`` with ``count_only``), when measured."""

    hash: Count
    revision: Count
    compact_revision: Count = 0
    keys: Count | None = None


class SnapshotInfo(_Part):
    file: str
    compression: Literal["zstd"] | None = None
    encryption: Literal["age"] | None = None


class CertificateNote(_Part):
    path: str
    subject: str
    not_before: str
    not_after: str
    problem: str


class StaticPodRevisions(_Part):
    """OpenShift's static pod resources in the bundle (``--resources-from-static-pod-resources``): the directory
    they were taken from, the kubelet's manifest directory beside it, and each component's revision
    (``kube-apiserver: 7`` = ``<directory>/kube-apiserver-pod-7``), with how it was chosen."""

    directory: str
    manifests_dir: str | None = None
    revisions: dict[str, Count] = Field(default_factory=dict)
    chosen_by: dict[str, str] = Field(default_factory=dict)


class Resources(_Part):
    """The resources bundle. ``directory`` is where it was written when not in the repository (``--resources-dir``);
    ``static_pods`` (optional, omitted when absent) the OpenShift revision directories it holds."""

    file: str
    directory: str | None = None
    paths: list[str] = Field(default_factory=list)
    files: Count | None = None
    sha256: Sha256 | None = None
    size: Count | None = None
    certificates: list[CertificateNote] = Field(default_factory=list)
    static_pods: StaticPodRevisions | None = None
    skipped: list[str] = Field(default_factory=list)  # devices, FIFOs, sockets found in a bundled directory


class EncryptionAtRest(_Part):
    key_names: list[str] = Field(default_factory=list)


class FileEntry(_Part):
    sha256: Sha256
    size: Count


class Verification(_Part):
    sha256_trailer: bool = False
    structure: bool = False
    roundtrip: bool | None = None
    pages_checked: Count | None = None


class Manifest(_Part):
    """One backup's manifest (see the module docstring). Field order is the order on disk."""

    format: int = FORMAT
    tool: Tool | None = None
    timestamp: Annotated[str, StringConstraints(pattern=rf"^{TS}$")]
    created_at: Annotated[AwareDatetime | None, Field(strict=False)] = None
    cluster_id: HexId | None = None
    member: Member | None = None
    etcd: EtcdVersions | None = None
    release: str | None = None
    revision: Count | None = None
    raft_index: Count | None = None
    raft_term: Count | None = None
    db_size: Count | None = None
    db_size_in_use: Count | None = None
    db_sha256: Sha256 | None = None
    status: StatusFigures | None = None
    hash_kv: HashKV | None = None
    snapshot: SnapshotInfo
    resources: Resources | None = None
    encryption_at_rest: EncryptionAtRest = Field(default_factory=EncryptionAtRest)
    alarms: list[int] = Field(default_factory=list)
    files: dict[str, FileEntry]
    verified: bool = False
    verification: Verification | None = None

    _source_format: int = PrivateAttr(default=FORMAT)

    @property
    def source_format(self) -> int:
        """The format the manifest was read in (1 for a file written before format 2)."""
        return self._source_format

    @property
    def id(self) -> str:
        return self.timestamp

    @property
    def snapshot_file(self) -> str:
        return self.snapshot.file

    @property
    def resources_file(self) -> str | None:
        return self.resources.file if self.resources is not None else None

    @property
    def snapshot_revision(self) -> int | None:
        """The snapshot's revision: from the status figures when the structure was walked, else as recorded."""
        return self.status.revision if self.status is not None else self.revision

    @property
    def total_key(self) -> int | None:
        return self.status.total_key if self.status is not None else None

    @property
    def server_version(self) -> str | None:
        return (self.etcd.server_version or None) if self.etcd is not None else None

    @property
    def key_names(self) -> list[str]:
        return list(self.encryption_at_rest.key_names)

    def data_files(self) -> list[str]:
        """The names the manifest lists, sorted (the snapshot and, when in the repository, the bundle)."""
        return sorted(self.files)

    def size(self) -> int:
        """Bytes of every file of the backup (a bundle kept outside the repository included)."""
        total = sum(f.size for f in self.files.values())
        r = self.resources
        if r is not None and r.file not in self.files and r.size is not None:
            total += r.size
        return total

    def as_json(self) -> dict[str, Any]:
        """The manifest as written (``hash_kv``, ``resources.static_pods`` and ``resources.skipped`` only when set)."""
        exclude: dict[str, Any] = {}
        if self.hash_kv is None:
            exclude["hash_kv"] = True
        r = self.resources
        if r is not None:
            left_out = {k for k, empty in (("static_pods", r.static_pods is None), ("skipped", not r.skipped)) if empty}
            if left_out:
                exclude["resources"] = left_out
        doc: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude=exclude or None)
        return doc


_REQUIRED_SINCE_2 = ("tool", "created_at", "cluster_id", "member", "etcd", "revision", "verification")


def problem(m: Manifest, expected_id: str | None = None, source_format: int = FORMAT) -> str | None:
    """The first problem with a manifest's content, or ``None``: the one validator, on read and on write."""
    ts = m.timestamp
    if not is_id(ts):
        return f"timestamp: {ts!r} is not a valid backup ID (YYYY-MM-DD_HHMMSS)"
    if expected_id is not None and ts != expected_id:
        return f"the manifest's timestamp {ts} is not its name's {expected_id}"
    if source_format >= 2:
        missing = [k for k in _REQUIRED_SINCE_2 if getattr(m, k) is None]
        if missing:
            return f"{missing[0]}: required in a format-{source_format} manifest, and missing"
    if not m.files:
        return 'the manifest has no "files" map'
    snapshots: list[str] = []
    bundles: list[str] = []
    for name in m.files:
        n = parse(name)
        if n is None or n.temp or not n.is_data:
            return f"files: {name!r} is not the name of a snapshot or resources bundle"
        if n.id != ts:
            return f"files: {name} is not from the backup's timestamp {ts}"
        (snapshots if n.kind is Kind.SNAPSHOT else bundles).append(name)
    if not snapshots:
        return f"the manifest lists no snapshot file (snapshot_{ts}.db...)"
    if len(snapshots) > 1 or len(bundles) > 1:
        return f"files: more than one {'snapshot' if len(snapshots) > 1 else 'resources bundle'} listed"
    snap = m.snapshot
    if snap.file != snapshots[0]:
        return f"snapshot.file: {snap.file!r} is not the snapshot the files map lists ({snapshots[0]})"
    sn = parse(snap.file)
    assert sn is not None
    if sn.compression != snap.compression:
        return f"snapshot.compression: {snap.compression!r} does not match the file name {snap.file}"
    if sn.encrypted != (snap.encryption == "age"):
        return f"snapshot.encryption: {snap.encryption!r} does not match the file name {snap.file}"
    return _resources_problem(m, bundles)


def _resources_problem(m: Manifest, bundles: list[str]) -> str | None:
    r = m.resources
    if r is None:
        return f"files: {bundles[0]} is listed but the manifest has no \"resources\" section" if bundles else None
    n = parse(r.file)
    if n is None or n.temp or n.kind is not Kind.RESOURCES:
        return f"resources.file: {r.file!r} is not the name of a resources bundle"
    if n.id != m.timestamp:
        return f"resources.file: {r.file} is not from the backup's timestamp {m.timestamp}"
    if bundles and bundles[0] != r.file:
        return f"resources.file: {r.file} is not the bundle the files map lists ({bundles[0]})"
    entry = m.files.get(r.file)
    if entry is not None and ((r.sha256 is not None and r.sha256 != entry.sha256)
                              or (r.size is not None and r.size != entry.size)):
        return f"resources: the sha256/size recorded for {r.file} differ from its entry in the files map"
    return None


def _first_error(e: ValidationError) -> str:
    err = e.errors(include_url=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "the manifest"
    got = repr(err.get("input"))
    tail = f" (got {got[:60]}{'...' if len(got) > 60 else ''})" if err["type"] != "missing" else ""
    return f"{where}: {err['msg']}{tail}"


def load(raw: bytes | str, expected_id: str | None = None) -> Manifest:
    """Parse, migrate (version 1) and validate a manifest; ``expected_id``: the ID its name carries.

    Raises :class:`ManifestError` (:class:`ManifestTooNew` for a newer format) naming the first problem.
    """
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"the manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ManifestError("the manifest is not a JSON object")
    version = doc.get("format", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ManifestError(f"format: {version!r} is not a manifest format version")
    if version > FORMAT:
        raise ManifestTooNew(f"the manifest is in format {version}, written by a newer etcdwarden (this one reads "
                             f"formats 1 to {FORMAT}); upgrade etcdwarden to use this backup")
    doc = migrate.upgrade(doc, version, FORMAT, expected_id)
    try:
        m = Manifest.model_validate(doc)
    except ValidationError as e:
        raise ManifestError(_first_error(e)) from None
    m._source_format = version
    found = problem(m, expected_id, version)
    if found is not None:
        raise ManifestError(found)
    return m


def dump(m: Manifest) -> bytes:
    """The manifest's bytes (JSON, 2-space indent); refuses (:class:`ManifestError`) what :func:`load` would."""
    if m.format != FORMAT:
        raise ManifestError(f"format: only format {FORMAT} is written (this manifest says {m.format})")
    found = problem(m, m.timestamp, FORMAT)
    if found is not None:
        raise ManifestError(found)
    return (json.dumps(m.as_json(), indent=2) + "\n").encode()
