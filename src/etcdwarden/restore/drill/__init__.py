"""Restore drills: prove a backup restorable by restoring it into a throwaway member and checking what it serves.

* :mod:`.campaign` chooses the backups of a repository, drills each and writes its record (``backups drill``);
* :mod:`.run` drills one backup, step by step, in a private directory;
* :mod:`.live` measures the restored member, :mod:`.figures` compares that with the manifest;
* :mod:`.keys` decodes every Kubernetes value, :mod:`.bundle` opens the resources bundle;
* :mod:`.segments` is the hook that replays a backup's segments (continuous backup); :mod:`.replay_segments`
  replays them with the point-in-time restore's engine (the default).
"""

from etcdwarden.restore.drill.campaign import (
    DEFAULT_MAX_AGE,
    DrillOutcome,
    DrillReport,
    NotDrillable,
    proven_within,
    run_drills,
    select,
)
from etcdwarden.restore.drill.live import DrillAborted
from etcdwarden.restore.drill.run import DrillOptions, drill_backup
from etcdwarden.restore.drill.segments import ReplayContext, ReplayResult, SegmentReplay

__all__ = ["DEFAULT_MAX_AGE", "DrillAborted", "DrillOptions", "DrillOutcome", "DrillReport", "NotDrillable",
           "ReplayContext", "ReplayResult", "SegmentReplay", "drill_backup", "proven_within", "run_drills", "select"]
