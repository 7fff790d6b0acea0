"""Restore a member's data directory or a whole cluster from a backup, replace a failed member, diagnose.

* :mod:`.source` finds the backup in a directory, a file or any repository URL (fetched, sha256 checked);
* :mod:`.backup` verifies it (manifest, snapshot, resources bundle) and counts what a restore must serve;
* :mod:`.checks` are the safety checks shared by every restore (versions, release, ownership);
* :mod:`.etcdutl` runs ``etcdutl snapshot restore`` (feature detection, version);
* :mod:`.member` restores one data directory (``restore member``): never deletes, moves aside;
* :mod:`.spec`, :mod:`.state`, :mod:`.cluster` restore a whole cluster step by step, resumable;
* :mod:`.replace` replaces a failed member of a cluster that still has quorum;
* :mod:`.diagnose` says which situation a cluster is in and what to run;
* :mod:`.runtimes` stop and start members (``process``, ``systemd``, ``static-pod``), locally or over SSH.
"""
