"""``EncryptionConfiguration`` (apiserver.config.k8s.io/v1): parse, validate, resolve, write.

Read exactly as kube-apiserver reads it: YAML or JSON, the legacy ``v1 EncryptionConfig`` kind too,
``kms.apiVersion`` defaulting to ``v1``, the validation rules of ``validation_encryption.go``, and the
per-resource lookup ``group/resource`` → ``*.group`` → ``*.*`` → identity-only. Written only as
``apiserver.config.k8s.io/v1`` YAML, 0600, atomically. Error messages give the field path and never
the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from etcdwarden.encryption.errors import EncryptionConfigError
from etcdwarden.encryption.keys import write_private_file
from etcdwarden.encryption.providers import (
    KEYED_PROVIDERS,
    IdentityProvider,
    KMSProvider,
    Provider,
    build_keyed,
)
from etcdwarden.encryption.transformer import ResourceTransformer

API_VERSION = "apiserver.config.k8s.io/v1"
KIND = "EncryptionConfiguration"
_KEY_SIZES = {"aescbc": (16, 24, 32), "aesgcm": (16, 24, 32), "secretbox": (32,)}
_NO_REST = {"apiserveripinfo", "serviceipallocations", "servicenodeportallocations"}
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


@dataclass
class Key:
    name: str
    secret: bytes = field(repr=False)

    def to_obj(self) -> dict[str, str]:
        return {"name": self.name, "secret": base64.b64encode(self.secret).decode()}


@dataclass
class KMSConfig:
    name: str
    api_version: str = "v1"
    endpoint: str = ""
    timeout: str = "3s"
    cachesize: int | None = None

    def to_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"apiVersion": self.api_version, "name": self.name, "endpoint": self.endpoint,
                               "timeout": self.timeout}
        if self.cachesize is not None:
            obj["cachesize"] = self.cachesize
        return obj


@dataclass
class ProviderConfig:
    type: str  # aescbc | aesgcm | secretbox | kms | identity
    keys: list[Key] = field(default_factory=list)
    kms: KMSConfig | None = None

    def build(self) -> Provider:
        if self.type == "identity":
            return IdentityProvider()
        if self.type == "kms":
            assert self.kms is not None
            return KMSProvider(self.kms.name, self.kms.api_version)
        return build_keyed(self.type, [(k.name, k.secret) for k in self.keys])

    def label(self) -> str:
        if self.type == "kms" and self.kms:
            return f"kms-{self.kms.api_version}/{self.kms.name}"
        return f"{self.type}/{self.keys[0].name}" if self.keys else self.type

    def to_obj(self) -> dict[str, Any]:
        if self.type == "identity":
            return {"identity": {}}
        if self.type == "kms":
            assert self.kms is not None
            return {"kms": self.kms.to_obj()}
        return {self.type: {"keys": [k.to_obj() for k in self.keys]}}


@dataclass
class ResourceConfig:
    resources: list[str]
    providers: list[ProviderConfig]

    def to_obj(self) -> dict[str, Any]:
        return {"resources": list(self.resources), "providers": [p.to_obj() for p in self.providers]}


def parse_group_resource(text: str) -> tuple[str, str]:
    """``schema.ParseGroupResource``: split at the first dot → (group, resource)."""
    if "." in text:
        resource, group = text.split(".", 1)
        return group, resource
    return "", text


@dataclass
class EncryptionConfiguration:
    resources: list[ResourceConfig] = field(default_factory=list)

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def parse(cls, data: bytes | str, source: str = "EncryptionConfiguration") -> EncryptionConfiguration:
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            # the YAML library's own message quotes the line, which may hold a key: never show it
            raise EncryptionConfigError(f"{source}: not valid YAML or JSON{where}") from None
        cfg = _from_obj(obj, source)
        cfg.validate(source)
        return cfg

    @classmethod
    def load(cls, path: Path) -> EncryptionConfiguration:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise EncryptionConfigError(f"{path}: EncryptionConfiguration file not found") from None
        except OSError as e:
            raise EncryptionConfigError(f"{path}: cannot read: {e.strerror}") from None
        return cls.parse(data, str(path))

    # -- writing -----------------------------------------------------------------------------
    def to_obj(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "resources": [r.to_obj() for r in self.resources]}

    def dump(self) -> str:
        return yaml.safe_dump(self.to_obj(), sort_keys=False, default_flow_style=False)

    def save(self, path: Path) -> str:
        """Validate, then write 0600 atomically; return the file's ``sha256:`` hash."""
        self.validate(str(path))
        data = self.dump().encode()
        write_private_file(path, data)
        return config_hash(data)

    # -- resolving ---------------------------------------------------------------------------
    def rule_for(self, group_resource: str) -> ResourceConfig | None:
        """The entry kube-apiserver uses for ``group_resource``: exact, then ``*.group``, then ``*.*``."""
        group, _ = parse_group_resource(group_resource)
        for wanted in (group_resource, f"*.{group}", "*.*"):
            for rc in self.resources:
                if wanted in rc.resources:
                    return rc
        return None

    def transformer_for(self, group_resource: str) -> ResourceTransformer:
        rc = self.rule_for(group_resource)
        return ResourceTransformer([p.build() for p in rc.providers] if rc else [IdentityProvider()])

    def key_names(self) -> set[str]:
        names: set[str] = set()
        for rc in self.resources:
            for p in rc.providers:
                names.update(k.name for k in p.keys)
                if p.kms:
                    names.add(p.kms.name)
        return names

    # -- validation --------------------------------------------------------------------------
    def validate(self, source: str = "EncryptionConfiguration") -> None:
        errs = _validate(self)
        if errs:
            raise EncryptionConfigError(f"{source}: invalid EncryptionConfiguration: " + "; ".join(errs))


def config_hash(data: bytes) -> str:
    """The hash kube-apiserver reports in ``apiserver_encryption_config_controller_last_config_info``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- object → model ---------------------------------------------------------------------------


def _expect_map(obj: object, path: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise EncryptionConfigError(f"{path}: expected a mapping")
    unknown = sorted(str(k) for k in obj if k not in allowed)
    if unknown:
        raise EncryptionConfigError(f"{path}: unknown field(s) {unknown}")
    return obj


def _from_obj(obj: object, source: str) -> EncryptionConfiguration:
    if obj is None:
        raise EncryptionConfigError(f"{source}: the file is empty")
    top = _expect_map(obj, source, {"apiVersion", "kind", "resources"})
    kind, api = top.get("kind"), top.get("apiVersion")
    if (api, kind) not in ((API_VERSION, KIND), ("v1", "EncryptionConfig")):
        raise EncryptionConfigError(
            f"{source}: expected apiVersion {API_VERSION} and kind {KIND}, got {api!r}/{kind!r}")
    res = top.get("resources")
    if not isinstance(res, list):
        raise EncryptionConfigError(f"{source}: resources: Required value: a list is required")
    out = EncryptionConfiguration()
    for i, entry in enumerate(res):
        path = f"resources[{i}]"
        e = _expect_map(entry, path, {"resources", "providers"})
        names = e.get("resources") or []
        provs = e.get("providers") or []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise EncryptionConfigError(f"{path}.resources: expected a list of strings")
        if not isinstance(provs, list):
            raise EncryptionConfigError(f"{path}.providers: expected a list")
        out.resources.append(ResourceConfig(list(names), [_provider(p, f"{path}.providers[{j}]")
                                                           for j, p in enumerate(provs)]))
    return out


def _provider(obj: object, path: str) -> ProviderConfig:
    m = _expect_map(obj, path, {"aescbc", "aesgcm", "secretbox", "kms", "identity"})
    types = [k for k, v in m.items() if v is not None]
    if len(types) > 1:
        raise EncryptionConfigError(
            f"{path}: more than one provider specified in a single element, should split into different list "
            "elements")
    if not types:
        raise EncryptionConfigError(
            f"{path}: provider does not contain any of the expected providers: KMS, identity, Secretbox, "
            "AESGCM, AESCBC")
    t = types[0]
    body = m[t]
    if t == "identity":
        _expect_map(body, f"{path}.identity", set())
        return ProviderConfig("identity")
    if t == "kms":
        k = _expect_map(body, f"{path}.kms", {"apiVersion", "name", "endpoint", "timeout", "cachesize"})
        cache = k.get("cachesize")
        if cache is not None and not isinstance(cache, int):
            raise EncryptionConfigError(f"{path}.kms.cachesize: expected an integer")
        api = str(k.get("apiVersion") or "v1")
        if cache is None and api == "v1":
            cache = 1000
        return ProviderConfig("kms", kms=KMSConfig(
            name=str(k.get("name") or ""), api_version=api, endpoint=str(k.get("endpoint") or ""),
            timeout=str(k.get("timeout") or "3s"), cachesize=cache))
    kb = _expect_map(body, f"{path}.{t}", {"keys"})
    keys = kb.get("keys") or []
    if not isinstance(keys, list):
        raise EncryptionConfigError(f"{path}.{t}.keys: expected a list")
    out = ProviderConfig(t)
    for j, key in enumerate(keys):
        kp = f"{path}.{t}.keys[{j}]"
        km = _expect_map(key, kp, {"name", "secret"})
        name, secret = km.get("name"), km.get("secret")
        if not isinstance(name, str) or not name:
            raise EncryptionConfigError(f"{kp}.name: Required value: key name is required")
        if not isinstance(secret, str) or not secret:
            raise EncryptionConfigError(f"{kp}.secret: Required value: secret is required")
        try:
            raw = base64.b64decode(secret.replace("\r", "").replace("\n", ""), validate=True)
        except (binascii.Error, ValueError):
            raise EncryptionConfigError(
                f"{kp}.secret: Invalid value: REDACTED: secrets must be base64 encoded (key {name!r})") from None
        out.keys.append(Key(name, raw))
    return out


# --- validation (validation_encryption.go) ---------------------------------------------------


def _validate(cfg: EncryptionConfiguration) -> list[str]:
    errs: list[str] = []
    if not cfg.resources:
        errs.append("resources: Required value: resources is required")
    kms_names: set[str] = set()
    seen_wild: list[tuple[str, str]] = []  # (group or '*', rule text) from earlier entries
    for i, rc in enumerate(cfg.resources):
        path = f"resources[{i}]"
        if not rc.resources:
            errs.append(f"{path}.resources: Required value: resources is required")
        if not rc.providers:
            errs.append(f"{path}.providers: Required value: providers is required")
        errs += _validate_resource_names(rc.resources, path, seen_wild)
        for j, p in enumerate(rc.providers):
            errs += _validate_provider(p, f"{path}.providers[{j}]", kms_names)
    return errs


def _validate_resource_names(names: list[str], path: str, seen_wild: list[tuple[str, str]]) -> list[str]:
    errs: list[str] = []
    local: list[str] = []
    for k, name in enumerate(names):
        p = f"{path}.resources[{k}]"
        group, resource = parse_group_resource(name)
        if name != name.lower():
            errs.append(f"{p}: Invalid value: {name!r}: resource name must not contain capital letters")
            continue
        if name == "*":
            errs.append(f"{p}: Invalid value: '*': use '*.' to encrypt all the resources from core API group "
                        "or '*.*' to encrypt all resources")
            continue
        if group == "*" and resource != "*":
            errs.append(f"{p}: Invalid value: {name!r}: use '*.' or '*.*' rather than '<resource>.*'")
            continue
        if group == "events.k8s.io":
            errs.append(f"{p}: Invalid value: {name!r}: 'events' resources are stored as core events; "
                        "use 'events' instead")
            continue
        if group == "extensions":
            errs.append(f"{p}: Invalid value: {name!r}: 'extensions' group has been removed")
            continue
        if group == "" and resource in _NO_REST:
            errs.append(f"{p}: Invalid value: {name!r}: resource {resource!r} has no REST API and cannot be "
                        "encrypted")
            continue
        for other in local:
            og, _ = parse_group_resource(other)
            if other == name:
                errs.append(f"{p}: Duplicate value: {name!r}")
            elif other == "*.*" or name == "*.*" or (other == f"*.{group}") or (name == f"*.{og}"):
                errs.append(f"{p}: Invalid value: {name!r}: resource overlaps with {other!r}")
        for wgroup, rule in seen_wild:
            if name == rule:
                continue  # an exact duplicate across entries: later one is simply never used
            if wgroup in ("*", group):
                errs.append(f"{p}: Invalid value: {name!r}: resource {name!r} is masked by earlier rule {rule!r}")
        local.append(name)
    for name in names:
        group, resource = parse_group_resource(name)
        if resource == "*":
            seen_wild.append((group, name))
    return errs


def _validate_provider(p: ProviderConfig, path: str, kms_names: set[str]) -> list[str]:
    errs: list[str] = []
    if p.type in KEYED_PROVIDERS:
        kp = f"{path}.{p.type}.keys"
        if not p.keys:
            errs.append(f"{kp}: Required value: keys (list of at least one key) is required")
        for j, key in enumerate(p.keys):
            sizes = _KEY_SIZES[p.type]
            if len(key.secret) not in sizes:
                errs.append(f"{kp}[{j}].secret: Invalid value: REDACTED: secret is not of the expected length, "
                            f"got {len(key.secret)}, expected one of {list(sizes)} (key {key.name!r})")
    elif p.type == "kms" and p.kms is not None:
        k = p.kms
        kp = f"{path}.kms"
        if not k.name:
            errs.append(f"{kp}.name: Required value: name is required")
        elif ":" in k.name:
            errs.append(f"{kp}.name: Invalid value: {k.name!r}: should not contain ':'")
        elif k.name in kms_names:
            errs.append(f"{kp}.name: Duplicate value: {k.name!r}")
        kms_names.add(k.name)
        if not k.endpoint:
            errs.append(f"{kp}.endpoint: Required value: endpoint is required")
        elif not k.endpoint.startswith("unix://") or len(k.endpoint) <= len("unix://"):
            errs.append(f"{kp}.endpoint: Invalid value: {k.endpoint!r}: unsupported scheme, only unix is supported")
        if k.api_version not in ("v1", "v2"):
            errs.append(f"{kp}.apiVersion: Unsupported value: {k.api_version!r}: supported values: v1, v2")
        if not _DURATION.match(k.timeout) or float(re.sub(r"[^0-9.]", "", k.timeout) or 0) <= 0:
            errs.append(f"{kp}.timeout: Invalid value: {k.timeout!r}: timeout should be a positive value")
        if k.api_version == "v2" and k.cachesize is not None:
            errs.append(f"{kp}.cachesize: Invalid value: {k.cachesize}: cachesize is not supported in v2")
    return errs
