"""``encryption enable|disable|rotate|migrate|status|get``: encryption at rest, Kubernetes-compatible.

Every subcommand takes ``--config PATH``, the EncryptionConfiguration file etcdwarden reads and keeps
up to date (the same file every kube-apiserver loads with ``--encryption-provider-config``).
"""

from __future__ import annotations

import argparse
import base64
import math
from pathlib import Path
from typing import Any

from etcdwarden.cli._async import with_client
from etcdwarden.cli.common import parse_duration
from etcdwarden.cli.output import Output
from etcdwarden.cli.repo_options import repo_opts, repository_options
from etcdwarden.encryption.backup_keys import BackupSource
from etcdwarden.encryption.config import EncryptionConfiguration
from etcdwarden.encryption.errors import TransformError
from etcdwarden.encryption.migrate import MigrationReport
from etcdwarden.encryption.ops import OpResult, Options, load_optional, run_operation
from etcdwarden.encryption.preflight import FORCE_NON_KUBERNETES
from etcdwarden.encryption.providers import KEYED_PROVIDERS, classify
from etcdwarden.encryption.resources import LAYOUTS, Resource, parse_extra, resource_of, select
from etcdwarden.encryption.rollout import Rollout
from etcdwarden.encryption.status import EncryptionStatus, collect
from etcdwarden.errors import EXIT_OK, EtcdwardenError, NotFound, SafetyRefusal, UsageError
from etcdwarden.etcd.client import EtcdClient


def register(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("encryption", help="enable, rotate, disable and inspect encryption at rest")
    s = p.add_subparsers(dest="encryption_command", metavar="SUBCOMMAND", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", required=True, type=Path, metavar="PATH",
                        help="EncryptionConfiguration file (read, and kept up to date)")
        sp.add_argument("--resources", metavar="LIST",
                        help="comma-separated resources (default: secrets, configmaps, routes, OAuth access and "
                             "authorize tokens)")
        sp.add_argument("--layout", choices=[*LAYOUTS, "all"], default="all",
                        help="etcd key layout: kubernetes (/registry/...), openshift (/kubernetes.io/..., "
                             "/openshift.io/...) or all (default)")
        sp.add_argument("--resource", action="append", default=[], metavar="NAME=PREFIX",
                        help="add a resource and its etcd prefix (repeatable)")

    def destructive(sp: argparse.ArgumentParser) -> None:
        common(sp)
        sp.add_argument("--dry-run", action="store_true", help="change nothing; show what would be done")
        sp.add_argument("--state-file", type=Path, metavar="PATH",
                        help="migration progress file (default: CONFIG.migration-state.json)")
        sp.add_argument("--page-size", type=int, default=1000, help="keys read per range request")
        sp.add_argument("--batch-size", type=int, default=128, help="values rewritten per transaction (<=128)")
        sp.add_argument("--concurrency", type=int, default=8, help="transactions in flight")
        sp.add_argument("--rate-limit", type=float, metavar="VALUES_PER_S",
                        help="throttle the scan (each rewrite is a MODIFIED event for watchers)")
        sp.add_argument("--skip-unreadable", action="store_true",
                        help="leave values that cannot be decrypted as they are (reported) instead of stopping "
                             "(a key that fails on most of its values is a wrong key and still stops everything)")
        sp.add_argument("--force", action="append", default=[], choices=[FORCE_NON_KUBERNETES], metavar="CHECK",
                        help="override a safety refusal: non-kubernetes = encrypt with aescbc, or decrypt from it, "
                             "values that are not Kubernetes objects (their decryption cannot be checked)")

    def rollout(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--apiserver-config", action="append", default=[], type=Path, metavar="PATH",
                        help="also write every configuration phase (0600, atomically) to this file, the one an "
                             "apiserver reads (repeatable)")
        sp.add_argument("--apiserver-metrics", action="append", default=[], metavar="URL",
                        help="an apiserver's /metrics URL: after each phase, wait until its "
                             "apiserver_encryption_config_controller_last_config_info reports the phase's hash "
                             "(repeatable)")
        sp.add_argument("--apiserver-cacert", type=Path, metavar="PATH", help="CA bundle for https metrics URLs")
        sp.add_argument("--apiserver-token-file", type=Path, metavar="PATH",
                        help="file holding a bearer token for the metrics URLs")
        sp.add_argument("--rollout-timeout", default="5m", metavar="DURATION",
                        help="how long every apiserver may take to load a phase (default 5m)")

    def backups(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--backups", action="append", default=[], metavar="REPO",
                        help="with --prune: keep every old key a kept backup in this repository (URL or path) "
                             "still lists in its manifest (repeatable)")
        sp.add_argument("--no-backups", action="store_true",
                        help="with --prune: there are no backups to consult (their old keys would be lost)")
        repo_opts(sp)

    en = s.add_parser("enable", parents=parents, help="encrypt with a new key, then rewrite every value")
    destructive(en)
    rollout(en)
    en.add_argument("--type", choices=list(KEYED_PROVIDERS), default="aescbc", help="provider (default aescbc)")
    en.set_defaults(func=cmd_enable)
    dis = s.add_parser("disable", parents=parents, help="write plaintext (identity), then decrypt every value")
    destructive(dis)
    rollout(dis)
    dis.add_argument("--prune", action="store_true", help="then remove key providers no value uses")
    backups(dis)
    dis.set_defaults(func=cmd_disable)
    rot = s.add_parser("rotate", parents=parents, help="new write key, rewrite every value, optionally prune")
    destructive(rot)
    rollout(rot)
    rot.add_argument("--prune", action="store_true",
                     help="remove old keys no value uses and no kept backup of --backups needs")
    backups(rot)
    rot.set_defaults(func=cmd_rotate)
    mig = s.add_parser("migrate", parents=parents, help="rewrite every value with the current write provider")
    destructive(mig)
    mig.set_defaults(func=cmd_migrate)
    st = s.add_parser("status", parents=parents, help="values per provider/key and the Encrypted condition")
    common(st)
    st.set_defaults(func=cmd_status)
    g = s.add_parser("get", parents=parents, help="read one value (decrypted with --decrypt)")
    common(g)
    g.add_argument("etcd_key", metavar="KEY", help="the etcd key, e.g. /registry/secrets/default/s1")
    g.add_argument("--decrypt", action="store_true", help="decrypt with the configuration's read path")
    g.set_defaults(func=cmd_get)


def _resources(args: argparse.Namespace) -> list[Resource]:
    names = [n.strip() for n in args.resources.split(",") if n.strip()] if args.resources else None
    layouts = list(LAYOUTS) if args.layout == "all" else [args.layout]
    extra = [parse_extra(x) for x in args.resource]
    return select(names, layouts, extra)


def _options(args: argparse.Namespace) -> Options:
    for flag, value, top in (("--page-size", args.page_size, 100_000), ("--batch-size", args.batch_size, 128),
                             ("--concurrency", args.concurrency, 64)):
        if not 1 <= value <= top:
            raise UsageError(f"{flag} must be from 1 to {top} (got {value})")
    if args.rate_limit is not None and not (math.isfinite(args.rate_limit) and args.rate_limit > 0):
        raise UsageError(f"--rate-limit must be a number of values per second above 0 (got {args.rate_limit})")
    return Options(dry_run=args.dry_run, state_path=args.state_file, page_size=args.page_size,
                   batch_ops=args.batch_size, concurrency=args.concurrency, skip_unreadable=args.skip_unreadable,
                   allow_non_kubernetes=FORCE_NON_KUBERNETES in args.force, rate_limit=args.rate_limit,
                   prune=bool(getattr(args, "prune", False)), rollout=_rollout(args), backups=_backups(args))


def _rollout(args: argparse.Namespace) -> Rollout | None:
    if not hasattr(args, "apiserver_config"):
        return None
    timeout = parse_duration(args.rollout_timeout, "--rollout-timeout", positive=True)
    if (args.apiserver_cacert or args.apiserver_token_file) and not args.apiserver_metrics:
        raise UsageError("--apiserver-cacert and --apiserver-token-file need --apiserver-metrics")
    return Rollout(configs=list(args.apiserver_config), metrics=list(args.apiserver_metrics), timeout=timeout,
                   cacert=args.apiserver_cacert, token_file=args.apiserver_token_file)


def _backups(args: argparse.Namespace) -> list[BackupSource]:
    repos = list(getattr(args, "backups", None) or [])
    if getattr(args, "prune", False) and not repos and not getattr(args, "no_backups", False):
        raise SafetyRefusal("--prune would delete old keys that existing backups may need to be restored; name the "
                            "backup repositories with --backups REPO", force_flag="--no-backups")
    if not repos:
        return []
    if not args.prune:
        raise UsageError("--backups is only used with --prune")
    options = repository_options(args)
    return [BackupSource(r, options) for r in repos]


def _render_migration(out: Output, rep: MigrationReport) -> None:
    rows = [[c.resource, c.write, c.scanned, c.current, c.rewritten, c.conflicts, c.deleted, c.unreadable]
            for c in rep.resources.values()]
    out.table(["RESOURCE", "WRITE PROVIDER", "SCANNED", "ALREADY", "WOULD REWRITE" if rep.dry_run else "REWRITTEN",
               "CONFLICTS", "DELETED", "UNREADABLE"], rows)
    rate = rep.rewritten / rep.elapsed if rep.elapsed > 0 else 0.0
    out.info(f"{'dry run: ' if rep.dry_run else ''}{rep.rewritten} values "
             f"{'would be ' if rep.dry_run else ''}rewritten in {rep.passes} pass(es), {rep.elapsed:.1f}s "
             f"({rate:.0f} values/s){', resumed' if rep.resumed else ''}")
    for p in rep.problems:
        out.warn(p)


def _operation(args: argparse.Namespace, out: Output, operation: str) -> int:
    resources = _resources(args)
    opts = _options(args)
    ptype = getattr(args, "type", "aescbc")

    async def go(c: EtcdClient) -> OpResult:
        return await run_operation(c, operation, args.config, resources, opts, ptype, notify=out.info)

    res = with_client(args, out, go)
    if out.is_json:
        out.json(res.to_dict())
    else:
        if res.migration:
            _render_migration(out, res.migration)
        if res.pruned:
            out.info(f"{'would prune' if res.dry_run else 'pruned'}: {res.pruned}")
        for n in res.notes:
            out.info(n)
    if res.migration and not res.migration.complete and not res.dry_run:
        raise EtcdwardenError(
            f"the migration is not complete: {sum(c.unreadable for c in res.migration.resources.values())} "
            "value(s) unreadable or values kept changing; see the warnings, fix, and rerun (it resumes)")
    return EXIT_OK


def cmd_enable(args: argparse.Namespace, out: Output) -> int:
    return _operation(args, out, "enable")


def cmd_disable(args: argparse.Namespace, out: Output) -> int:
    return _operation(args, out, "disable")


def cmd_rotate(args: argparse.Namespace, out: Output) -> int:
    return _operation(args, out, "rotate")


def cmd_migrate(args: argparse.Namespace, out: Output) -> int:
    return _operation(args, out, "migrate")


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    resources = _resources(args)
    cfg = load_optional(args.config)

    async def go(c: EtcdClient) -> EncryptionStatus:
        return await collect(c, cfg, resources)

    st = with_client(args, out, go)
    if out.is_json:
        out.json(st.to_dict())
    else:
        rows = [[r.resource, r.write, r.total, r.on_write, r.pending, r.unreadable,
                 ", ".join(f"{k}={v}" for k, v in sorted(r.by_label.items())) or "-"] for r in st.resources]
        out.table(["RESOURCE", "WRITE PROVIDER", "VALUES", "ON WRITE PROVIDER", "PENDING", "UNREADABLE",
                   "BY PROVIDER"], rows)
        c = st.condition
        out.line(f"{c.type}={c.status} reason={c.reason}: {c.message}")
        problems = [p for r in st.resources for p in r.problems]
        for p in problems[:10]:
            out.warn(p)
        total = sum(r.unreadable + r.unverifiable for r in st.resources)
        if total > 10:
            out.warn(f"... and {total - 10} more (-w json lists up to 20 per resource)")
    if st.unreadable:  # never a success: the configuration does not read what is stored
        raise EtcdwardenError(f"{st.unreadable} stored value(s) cannot be decrypted with {args.config}: "
                              "check its keys (a wrong secret, or a key missing from the file)")
    return EXIT_OK


def cmd_get(args: argparse.Namespace, out: Output) -> int:
    name = str(args.etcd_key)
    key = name.encode()
    resources = _resources(args)
    r = resource_of(key, resources)
    cfg = load_optional(args.config) or EncryptionConfiguration()
    if r is None and args.decrypt:
        raise UsageError(f"{name} is not under the prefix of a selected resource, so its provider list is "
                         "unknown; add --resource NAME=PREFIX")
    resp = with_client(args, out, lambda c: c.get(key))
    if not resp.kvs:
        raise NotFound(f"key {name} not found")
    kv = resp.kvs[0]
    label = classify(kv.value).label
    value = kv.value
    if args.decrypt:
        assert r is not None
        try:
            value = cfg.transformer_for(r.name).read(kv.value, key).plaintext
        except TransformError as e:
            raise EtcdwardenError(f"{name}: cannot decrypt ({e})") from None
    if out.is_json:
        out.json({"key": name, "resource": r.name if r else None, "stored_as": label,
                  "decrypted": bool(args.decrypt), "mod_revision": int(kv.mod_revision), "lease": int(kv.lease),
                  "value_base64": base64.b64encode(value).decode()})
        return EXIT_OK
    out.info(f"stored as {label}{' (decrypted below)' if args.decrypt and label != 'identity' else ''}")
    out.line(name)
    out.line(value.decode("utf-8", errors="backslashreplace"))
    return EXIT_OK
