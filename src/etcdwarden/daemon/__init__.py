"""The etcdwarden daemon: schedules (cron + IANA time zone), single-agent election, health and metrics.

* :mod:`.config`, :mod:`.crs`, :mod:`.loader`, :mod:`.spec`: the strict YAML configuration and the
  OpenShift ``Backup`` / ``EtcdBackup`` custom resources it accepts;
* :mod:`.schedule`: cron with time zones and DST, due/catch-up decisions (pure, clock injected);
* :mod:`.state`: job state in etcd, written only by the leader;
* :mod:`.runner`: the :class:`~.runner.JobRunner` protocol the daemon calls, and its default;
* :mod:`.jobs`, :mod:`.service`: running jobs, the agent's loops, signals;
* :mod:`.http`, :mod:`.metrics`, :mod:`.logs`: endpoints, Prometheus metrics, JSON logs.
"""
