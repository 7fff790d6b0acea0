"""Which situation is the cluster in, and the exact command that gets it out.

* healthy: every voting member answers a linearizable read, no alarm;
* alarm: members answer but an alarm is active (NOSPACE: compact, defragment, disarm);
* minority lost: some voters are down but a majority answers -> ``member replace NAME``;
* quorum lost: fewer than a majority answer (or none) -> ``restore cluster BACKUP`` from the last backup, or,
  when the cluster spec is known and a member's data directory (read offline, :mod:`.survey`) holds more
  than the newest backup, ``restore quorum`` from that member (:func:`with_survey`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from etcdwarden.errors import EtcdError
from etcdwarden.etcd.client import EtcdClient
from etcdwarden.etcd.endpoints import Endpoint
from etcdwarden.inspect import Health, Quorum, health_all, quorum
from etcdwarden.restore.survey import DataDirSurvey, QuorumAdvice

HEALTHY, ALARM, MINORITY, QUORUM_LOST = "healthy", "alarm", "minority-lost", "quorum-lost"


@dataclass
class Diagnosis:
    situation: str
    summary: str
    commands: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    voters: int = 0
    healthy_voters: int = 0
    surveys: list[DataDirSurvey] = field(default_factory=list)
    advice: QuorumAdvice | None = None

    @property
    def ok(self) -> bool:
        return self.situation == HEALTHY

    def line(self) -> str:
        run = f"; run: {' && '.join(self.commands)}" if self.commands else ""
        return f"diagnosis: {self.summary}{run}"

    def as_json(self) -> dict[str, Any]:
        doc = {"situation": self.situation, "summary": self.summary, "commands": self.commands,
               "failed": self.failed, "voters": self.voters, "healthy_voters": self.healthy_voters}
        if self.surveys:
            doc["data_dirs"] = [s.as_json() for s in self.surveys]
        if self.advice is not None:
            doc["advice"] = self.advice.as_json()
        return doc


def classify(health: list[Health], q: Quorum, spec: str | None = None, backup: str | None = None) -> Diagnosis:
    """Pure: the situation from health results and the quorum count."""
    spec_arg = f" --spec {spec}" if spec else " --spec cluster.yaml"
    backup_arg = backup or "BACKUP_DIR"
    alarms = sorted({h.error for h in health if h.error and h.error.startswith("Active Alarm")})
    answering = sum(1 for h in health if h.healthy or (h.error or "").startswith("Active Alarm"))
    if (not q.known or q.voters == 0) and answering == 0:
        return Diagnosis(QUORUM_LOST, "quorum lost: no member answers",
                         [f"etcdwarden restore cluster {backup_arg}{spec_arg}"])
    if not q.known or q.voters == 0:
        return Diagnosis("unknown", "members answer but the member list could not be read; check "
                         "`etcdwarden member list` and the members' logs")
    if q.healthy_voters + (answering if alarms else 0) < q.needed:
        return Diagnosis(QUORUM_LOST, f"quorum lost: {q.healthy_voters} of {q.voters} voting members healthy, "
                         f"{q.needed} needed; restore the cluster from the last backup",
                         [f"etcdwarden restore cluster {backup_arg}{spec_arg}"], q.unhealthy_names, q.voters,
                         q.healthy_voters)
    if alarms:
        return Diagnosis(ALARM, f"alarm: {'; '.join(alarms)}", ["etcdwarden defrag --cluster",
                                                                "etcdwarden alarm disarm"], [], q.voters,
                         q.healthy_voters)
    if q.unhealthy_names:
        return Diagnosis(MINORITY, f"minority lost: {', '.join(q.unhealthy_names)} down, "
                         f"{q.healthy_voters} of {q.voters} voting members healthy (quorum kept)",
                         [f"etcdwarden member replace {n}{spec_arg}" for n in q.unhealthy_names],
                         q.unhealthy_names, q.voters, q.healthy_voters)
    return Diagnosis(HEALTHY, f"healthy: {q.healthy_voters} of {q.voters} voting members healthy", [], [],
                     q.voters, q.healthy_voters)


async def diagnose(client: EtcdClient, endpoints: list[Endpoint], spec: str | None = None,
                   backup: str | None = None) -> tuple[Diagnosis, list[Health]]:
    """Health of ``endpoints`` (plus every voter the member list names) and the situation."""
    hs = await health_all(client, endpoints)
    try:
        q = await quorum(client, hs)
    except EtcdError:
        q = Quorum(voters=0, healthy_voters=0, known=False)
    return classify(hs, q, spec, backup), hs


def with_survey(d: Diagnosis, surveys: list[DataDirSurvey], advice: QuorumAdvice) -> Diagnosis:
    """A quorum-lost diagnosis completed with what the data directories hold and the advice drawn from them."""
    d.surveys = surveys
    d.advice = advice
    head = d.summary.split("; restore the cluster from")[0]
    d.summary = f"{head}; {advice.summary}"
    d.commands = [advice.command]
    return d
