"""Map gRPC failures from etcd to etcdwarden's typed errors with human messages.

etcd reports several auth failures of its Maintenance API as code UNKNOWN with the text
``auth: permission denied`` (3.5), so text is matched as well as codes.
"""

from __future__ import annotations

import grpc

from etcdwarden.errors import (
    AuthenticationFailed,
    Compacted,
    Corrupt,
    EtcdError,
    NoLeader,
    NoSpace,
    NotFound,
    PermissionDenied,
    Timeout,
    TLSError,
    Unreachable,
    Unsupported,
)

_TLS_MARKERS = ("ssl", "tls", "handshake", "certificate")


def tls_hint(details: str, cacert: str | None, cert: str | None) -> str:
    low = details.lower()
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        if cacert:
            return f"the server's certificate is not trusted by the CA file {cacert} (wrong --cacert?)"
        return "the server's certificate is not trusted by the system CAs; pass --cacert"
    if any(m in low for m in ("certificate_required", "certificate required", "bad_certificate",
                               "bad certificate")):
        if cert:
            return f"the server rejected the client certificate {cert} (not signed by a CA it trusts?)"
        return "the server requires a client certificate: pass --cert and --key"
    if "wrong_version_number" in low or "wrong version number" in low:
        return "the endpoint does not speak TLS (use http:// or drop the TLS flags)"
    return f"TLS handshake failed: {details}"


def map_rpc_error(
    err: grpc.aio.AioRpcError | grpc.RpcError,
    endpoint: str,
    timeout: float | None = None,
    cacert: str | None = None,
    cert: str | None = None,
    tls: bool = False,
) -> EtcdError:
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else str(err)) or ""
    low = details.lower()
    if "user name is empty" in low:
        return PermissionDenied("authentication is enabled on the cluster: pass --user and --password", endpoint)
    if "permission denied" in low or code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(
            "permission denied: the user lacks the role this call needs "
            "(snapshot, defragment, hashkv and alarms need a user with the root role)",
            endpoint,
        )
    if "authentication failed" in low:
        return AuthenticationFailed("authentication failed: invalid user name or password", endpoint)
    if "invalid auth token" in low or code == grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationFailed(f"the auth token was rejected: {details}", endpoint)
    if "database space exceeded" in low:
        return NoSpace(
            "database space exceeded (NOSPACE alarm): compact, defragment every member, then disarm the alarm",
            endpoint,
        )
    if "unhealthy cluster" in low or "not enough started members" in low:
        return EtcdError(
            f"{details}: the change would risk quorum, or the leader is not yet connected to every member "
            "(a member is down or started less than 5s ago); check `endpoint health --cluster` and retry",
            endpoint,
        )
    if "no leader" in low:
        return NoLeader("the member has no leader (is quorum lost?)", endpoint)
    if "corrupt" in low:
        return Corrupt("the cluster reports CORRUPT data; do not write to it, restore from a backup", endpoint)
    if "has been compacted" in low:
        return Compacted(details, endpoint)
    if "member not found" in low:
        return NotFound("member not found", endpoint)
    if "not supported for learner" in low:
        return Unsupported("this call is not supported by a learner member", endpoint)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        t = f" after {timeout:g}s" if timeout else ""
        return Timeout(f"the command timed out{t}; raise --command-timeout if the cluster is just slow", endpoint)
    if code == grpc.StatusCode.UNAVAILABLE:
        if tls and any(m in low for m in _TLS_MARKERS):
            return TLSError(tls_hint(details, cacert, cert), endpoint)
        if "connection refused" in low:
            return Unreachable("connection refused (is etcd running and listening there?)", endpoint)
        return Unreachable(f"unreachable: {details}", endpoint)
    name = code.name if code is not None else "ERROR"
    return EtcdError(f"{name}: {details}", endpoint)
