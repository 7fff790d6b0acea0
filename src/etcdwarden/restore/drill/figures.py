"""The figures a drill compares: what the manifest recorded at backup time against what was measured.

* ``revision``: the restored member's revision equals the snapshot's (``status.revision``; etcd serves
  the compaction revision when it is newer than every key left). A manifest without the structure walk's
  figures (``--verify hash``) recorded the member's revision *before* the snapshot: a lower bound.
* ``keys``: the live keys at the recorded HashKV revision (``hash_kv.keys``, recorded since issue 14).
* ``hash_kv``: ``HashKV`` at the recorded revision. Compared only at the same compaction revision (a
  compaction on the source between the snapshot and the measurement changes the hash at that revision
  without changing the data); an older backup has none: the drill says so and relies on the others.
* ``snapshot_total_key`` and ``snapshot_hash``: the ``snapshot status`` figures of the file restored
  (read by etcdwarden's own bbolt reader) against those the manifest recorded.
"""

from __future__ import annotations

from etcdwarden.format.drill import Figure
from etcdwarden.format.manifest import Manifest
from etcdwarden.restore.drill.live import Live
from etcdwarden.snapshot.status import SnapshotStatus

NOT_RECORDED_HASH = ("HashKV was not recorded at backup time (a backup taken before etcdwarden recorded it): "
                     "drilled on revision and key count")


def _eq(recorded: int | None, measured: int | None, note: str | None = None) -> Figure:
    if recorded is None:
        return Figure(recorded=None, measured=measured, ok=None, note=note or "not recorded at backup time")
    return Figure(recorded=recorded, measured=measured, ok=measured == recorded, note=note)


def compare(m: Manifest, live: Live, status: SnapshotStatus | None) -> dict[str, Figure]:
    """Every figure, named as in :mod:`etcdwarden.format.drill` (``ok`` None: not compared, ``note`` says why)."""
    out: dict[str, Figure] = {"revision": _revision(m, live)}
    hk = m.hash_kv
    if "keys" in live.problems:
        out["keys"] = Figure(recorded=hk.keys if hk else None, measured=None, ok=False, note=live.problems["keys"])
    elif hk is not None and hk.keys is not None:
        out["keys"] = _eq(hk.keys, live.keys, f"live keys at revision {hk.revision}")
    else:
        out["keys"] = Figure(measured=live.keys, note=f"live keys at revision {live.at}; not recorded at backup time")
    if hk is None:
        out["hash_kv"] = Figure(measured=live.hash, note=NOT_RECORDED_HASH)
    elif "hash_kv" in live.problems:
        out["hash_kv"] = Figure(recorded=hk.hash, ok=False, note=live.problems["hash_kv"])
    elif live.compact_revision != hk.compact_revision:
        out["hash_kv"] = Figure(recorded=hk.hash, measured=live.hash, note=(
            f"not comparable: recorded at compaction revision {hk.compact_revision}, the restored member is "
            f"compacted at {live.compact_revision} (the source compacted between the snapshot and the measurement)"))
    else:
        out["hash_kv"] = _eq(hk.hash, live.hash, f"HashKV at revision {hk.revision}")
    recorded_status = m.status
    if recorded_status is not None:
        measured = status
        out["snapshot_total_key"] = _eq(recorded_status.total_key, measured.total_key if measured else None,
                                        "snapshot status totalKey of the restored file")
        out["snapshot_hash"] = _eq(recorded_status.hash, measured.hash if measured else None,
                                   "snapshot status hash of the restored file")
    return out


def _revision(m: Manifest, live: Live) -> Figure:
    recorded = m.snapshot_revision
    if recorded is None:
        return Figure(measured=live.revision, note="not recorded at backup time")
    if m.status is None:
        return Figure(recorded=recorded, measured=live.revision, ok=live.revision >= recorded,
                      note="recorded before the snapshot was taken (--verify hash): the member must serve at least it")
    expected = max(recorded, live.compact_revision or 0)
    note = None if expected == recorded else f"the snapshot is compacted at {expected}, past its last key's revision"
    return Figure(recorded=recorded, measured=live.revision, ok=live.revision == expected, note=note)


def failures(figures: dict[str, Figure]) -> list[str]:
    """One line per figure that differs (``ok`` False)."""
    out = []
    for name, f in figures.items():
        if f.ok is False:
            got = "could not be measured" if f.measured is None else f"is {f.measured}"
            out.append(f"{name} {got}, the manifest recorded {f.recorded}" + (f" ({f.note})" if f.note else ""))
    return out
