"""Object-store options shared by the commands that take a repository URL (``backup``, ``backups``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from etcdwarden.errors import UsageError

if TYPE_CHECKING:
    from etcdwarden.repository.base import RepositoryOptions


def repo_opts(q: argparse.ArgumentParser) -> None:
    q.add_argument("--repository-config", metavar="FILE",
                   help="YAML/JSON with endpoint, region, access_key_id, secret_access_key, session_token, "
                        "allow_http, max_retries, retry_timeout, part_size, ...")
    q.add_argument("--s3-endpoint", metavar="URL", help="S3-compatible endpoint (path-style requests)")
    q.add_argument("--region", help="object-store region")


def repository_options(args: argparse.Namespace) -> RepositoryOptions:
    from etcdwarden.repository.base import RepositoryOptions

    opts = RepositoryOptions()
    if args.repository_config:
        path = Path(args.repository_config)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--repository-config {path}: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise UsageError(f"--repository-config {path}: not UTF-8 text (offset {e.start}); save it as UTF-8") \
                from None
        import yaml

        try:
            doc = yaml.safe_load(text) or {}
        except (yaml.YAMLError, RecursionError):
            raise UsageError(f"--repository-config {path}: not valid YAML/JSON") from None
        if isinstance(doc, dict) and isinstance(doc.get("repository"), dict):
            doc = doc["repository"]
        if not isinstance(doc, dict):
            raise UsageError(f"--repository-config {path}: expected a mapping of options")
        opts = RepositoryOptions.from_mapping(doc, opts)
    if args.s3_endpoint:
        opts.endpoint = args.s3_endpoint
    if args.region:
        opts.region = args.region
    return opts


