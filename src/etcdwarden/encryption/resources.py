"""Which etcd prefixes hold which resources, in the Kubernetes and OpenShift layouts.

The default set is the one OpenShift encrypts: secrets, configmaps, routes, OAuth access tokens and
OAuth authorize tokens. Layouts:

* ``kubernetes``: kube-apiserver's default ``--etcd-prefix=/registry`` for every resource;
* ``openshift``: ``/kubernetes.io/`` for the kube-apiserver's resources and ``/openshift.io/`` for the
  openshift-apiserver / oauth-apiserver ones.

Prefixes always end with ``/`` so ``/registry/secrets/`` never matches ``/registry/secretsfoo/``.
More resources can be added with :func:`parse_extra` (``group-resource=/prefix/``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from etcdwarden.errors import UsageError

LAYOUTS = ("kubernetes", "openshift")


@dataclass(frozen=True)
class Resource:
    """A group-resource as written in an EncryptionConfiguration, and the etcd prefixes it lives at."""

    name: str  # e.g. "secrets", "routes.route.openshift.io"
    prefixes: tuple[bytes, ...]

    def owns(self, key: bytes) -> bool:
        return any(key.startswith(p) for p in self.prefixes)


# group-resource → {layout: prefix}
KNOWN: dict[str, dict[str, str]] = {
    "secrets": {"kubernetes": "/registry/secrets/", "openshift": "/kubernetes.io/secrets/"},
    "configmaps": {"kubernetes": "/registry/configmaps/", "openshift": "/kubernetes.io/configmaps/"},
    "routes.route.openshift.io": {"kubernetes": "/registry/routes/", "openshift": "/openshift.io/routes/"},
    "oauthaccesstokens.oauth.openshift.io": {
        "kubernetes": "/registry/oauth/accesstokens/", "openshift": "/openshift.io/oauth/accesstokens/"},
    "oauthauthorizetokens.oauth.openshift.io": {
        "kubernetes": "/registry/oauth/authorizetokens/", "openshift": "/openshift.io/oauth/authorizetokens/"},
}
DEFAULT_SET = tuple(KNOWN)
ALIASES = {
    "routes": "routes.route.openshift.io",
    "oauthaccesstokens": "oauthaccesstokens.oauth.openshift.io",
    "oauthauthorizetokens": "oauthauthorizetokens.oauth.openshift.io",
}


def _norm_prefix(text: str) -> bytes:
    if not text.startswith("/"):
        raise UsageError(f"resource prefix {text!r} must start with '/'")
    return (text if text.endswith("/") else text + "/").encode()


def parse_extra(spec: str) -> tuple[str, str]:
    """``name=/prefix/`` (from ``--resource``) → (name, prefix)."""
    name, sep, prefix = spec.partition("=")
    name = name.strip()
    if not sep or not name or not prefix:
        raise UsageError(f"--resource {spec!r}: expected GROUP-RESOURCE=/etcd/prefix/, "
                         "e.g. widgets.example.com=/registry/example.com/widgets/")
    if name != name.lower() or name.startswith("*"):
        raise UsageError(f"--resource {spec!r}: the resource must be a lower-case group-resource, not a wildcard")
    return name, prefix.strip()


def select(names: Sequence[str] | None = None, layouts: Sequence[str] = LAYOUTS,
           extra: Iterable[tuple[str, str]] = ()) -> list[Resource]:
    """The resources to work on: ``names`` of the known set (default: all), in ``layouts``, plus extras."""
    for lay in layouts:
        if lay not in LAYOUTS:
            raise UsageError(f"unknown layout {lay!r}; use one of {', '.join(LAYOUTS)}")
    chosen = [ALIASES.get(n, n) for n in (names if names else DEFAULT_SET)]
    extras: dict[str, list[bytes]] = {}
    for name, prefix in extra:
        extras.setdefault(name, []).append(_norm_prefix(prefix))
    out: list[Resource] = []
    for name in chosen:
        if name not in KNOWN and name not in extras:
            raise UsageError(f"unknown resource {name!r}; known: {', '.join(DEFAULT_SET)} "
                             "(add others with --resource NAME=/prefix/)")
        prefixes = [KNOWN[name][lay].encode() for lay in layouts] if name in KNOWN else []
        prefixes += extras.pop(name, [])
        out.append(Resource(name, tuple(dict.fromkeys(prefixes))))
    out += [Resource(n, tuple(dict.fromkeys(p))) for n, p in extras.items()]
    return out


def resource_of(key: bytes, resources: Sequence[Resource]) -> Resource | None:
    """The resource whose prefix holds ``key`` (longest prefix wins)."""
    best: tuple[int, Resource] | None = None
    for r in resources:
        for p in r.prefixes:
            if key.startswith(p) and (best is None or len(p) > best[0]):
                best = (len(p), r)
    return best[1] if best else None
