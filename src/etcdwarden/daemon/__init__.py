"""The etcdwarden daemon: schedules (cron + IANA time zone), single-agent election, health and metrics.

* :mod:`.config`, :mod:`.crs`, :mod:`.spec`: the strict YAML configuration, the OpenShift ``Backup`` /
  ``EtcdBackup`` custom resources it accepts, and the resolved configuration;
* :mod:`.loader`, :mod:`.resolve`, :mod:`.problems`: reading the files, checking across documents, and
  reporting every problem with its file, line and path;
* :mod:`.schedule`: cron with time zones and DST, due/catch-up decisions (pure, clock injected);
* :mod:`.state`: job state in etcd, written only by the leader;
* :mod:`.runner`: the :class:`~.runner.JobRunner` protocol the daemon calls, and its default;
* :mod:`.jobs`, :mod:`.service`: running jobs, the agent's loops, signals;
* :mod:`.observe`: what the endpoints answer and the figures behind the metrics;
* :mod:`.http`, :mod:`.httpsec`, :mod:`.metrics`, :mod:`.logs`: the HTTP server and its TLS and token,
  Prometheus metrics, JSON logs.
"""
