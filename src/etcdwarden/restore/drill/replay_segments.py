"""The drill's segment replay: a backup's chain replayed on the drill's scratch member (issue 14 with 13).

Once the drill has proven the base backup on its scratch member (:mod:`.run`), :func:`replay_segments`
replays every usable segment of the backup's chain on that same member with the point-in-time restore's
engine (:class:`~etcdwarden.restore.replay.Replayer`: one Txn per source revision, each revision checked,
leases recreated and kept alive) up to the chain's last revision. Each segment is proven first (size,
sha256, hash chain: :func:`etcdwarden.restore.pitr.prepare`, fetched into a private staging directory for
object stores). The drill fails when a segment is missing, altered or out of the chain, or when the member
does not end at the chain's last revision: a chain that cannot be replayed is a window that cannot be
restored, and the drill says so on the day it is found, not on the day of the restore.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import grpc

from etcdwarden.errors import EtcdwardenError
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2 as pb
from etcdwarden.etcd.api.etcdserverpb import rpc_pb2_grpc as rpc
from etcdwarden.format.drill import Figure
from etcdwarden.format.segment import decode_segment
from etcdwarden.repository.window import ReplayPlan, Target, read_window
from etcdwarden.restore.drill.live import DrillAborted
from etcdwarden.restore.drill.segments import ReplayContext, ReplayResult
from etcdwarden.restore.pitr import DECODE_CHUNK, prepare, read_chunks
from etcdwarden.restore.replay import Replayer
from etcdwarden.restore.scratch_tls import ScratchTLS

CALL_TIMEOUT = 30.0


def member_leases(url: str, tls: ScratchTLS | None) -> dict[int, int]:
    """The leases the scratch member holds (ID -> granted TTL): the base snapshot's, kept alive by the replay."""
    with tls.channel(url) if tls is not None else grpc.insecure_channel(url.split("://", 1)[-1]) as channel:
        stub = rpc.LeaseStub(channel)
        ids = [int(lease.ID) for lease in stub.LeaseLeases(pb.LeaseLeasesRequest(), timeout=CALL_TIMEOUT).leases]
        return {lid: max(1, int(stub.LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lid),
                                                     timeout=CALL_TIMEOUT).grantedTTL)) for lid in ids}


def replay_segments(ctx: ReplayContext) -> ReplayResult:
    """Replay the chain of ``ctx.entry`` on the drill's member (see the module docstring)."""
    url = ctx.client.endpoints[0].raw
    try:
        chain = read_window(ctx.repo, only={ctx.entry.id}).chain(ctx.entry.id)
    except EtcdwardenError as e:
        return ReplayResult(ctx.base_revision, problems=[f"the chain of backup {ctx.entry.id} cannot be read: {e}"])
    problems: list[str] = []
    if chain.broken is not None:
        b = chain.broken
        problems.append(f"the chain breaks at {b.at} ({b.problem}); only revisions up to {b.last_good_revision} "
                        "can be restored")
    end = chain.chain.last_revision
    plan = ReplayPlan(base=chain.entry, base_revision=chain.base_revision, segments=chain.segments,
                      stop_revision=end, stop_time=None, target=Target(revision=end))
    replayed = ctx.base_revision
    # (never the system temp dir: segments hold every value written, Secrets included)
    with tempfile.TemporaryDirectory(prefix=".etcdwarden-drill-segments-", dir=ctx.work) as staging:
        try:
            proven = prepare(ctx.repo, read_window(ctx.repo, only={ctx.entry.id}), plan, Path(staging))
            with Replayer(url, ctx.base_revision, proven.lease_ttls, member_leases(url, ctx.tls), tls=ctx.tls) as rp:
                for seg in proven.segments:
                    if ctx.abort is not None and ctx.abort.is_set():
                        raise DrillAborted("the drill was stopped during its segments step")
                    m = seg.manifest
                    done = rp.apply(decode_segment(read_chunks(seg.path, DECODE_CHUNK), m.file), end)
                    rp.settle_revokes()
                    rp.check()
                    if done:
                        break
                replayed = rp.revision
                stats = rp.finish()
        except DrillAborted:
            raise
        except (EtcdwardenError, grpc.RpcError) as e:
            detail = e.details() if isinstance(e, grpc.RpcError) else str(e)
            return ReplayResult(replayed, figures={"revision": Figure(recorded=end, measured=replayed, ok=False)},
                                problems=[*problems, f"replay stopped at revision {replayed}: {detail}"])
    ok = replayed == end
    if not ok:
        problems.append(f"the replay ended at revision {replayed}, not at the chain's last revision {end}")
    return ReplayResult(replayed, figures={"revision": Figure(recorded=end, measured=replayed, ok=ok)},
                        problems=problems,
                        notes=[f"replayed {stats.revisions} revision(s) of {len(proven.segments)} segment(s) at "
                               f"{stats.rate:.0f}/s"])
