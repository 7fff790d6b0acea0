"""EncryptionConfiguration parsing/validation/writing, key generation, resource sets, plans."""

from __future__ import annotations

import base64
import json
import stat
from pathlib import Path

import pytest

from etcdwarden.encryption.config import EncryptionConfiguration, config_hash
from etcdwarden.encryption.errors import EncryptionConfigError
from etcdwarden.encryption.keys import generate_key, unique_key_name, write_private_file
from etcdwarden.encryption.plan import plan_disable, plan_enable, plan_prune, plan_rotate
from etcdwarden.encryption.resources import DEFAULT_SET, parse_extra, resource_of, select
from etcdwarden.errors import UsageError

pytestmark = pytest.mark.unit

K32 = base64.b64encode(bytes(range(32))).decode()
K16 = base64.b64encode(bytes(range(16))).decode()

VECTOR_CONFIG = f"""
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
- resources: [secrets]
  providers:
  - aesgcm:    {{keys: [{{name: key1, secret: "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}}]}}
  - aescbc:    {{keys: [{{name: key1, secret: "{K32}"}}]}}
  - secretbox: {{keys: [{{name: key1, secret: "YGFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6e3x9fn8="}}]}}
  - identity: {{}}
"""


def cfg_text(providers: str, resources: str = "[secrets]", extra: str = "") -> str:
    return (f"apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n"
            f"- resources: {resources}\n  providers:\n{providers}{extra}")


def test_reference_config_reads_the_vectors() -> None:
    cfg = EncryptionConfiguration.parse(VECTOR_CONFIG)
    vectors = json.loads(Path(__file__).with_name("encryption-vectors.json").read_text())
    t = cfg.transformer_for("secrets")
    for v in vectors:
        if v["provider"] in ("aescbc", "aesgcm", "secretbox") and v["name"] != "aesgcm-aes128-short":
            assert t.read(bytes.fromhex(v["stored"]), bytes.fromhex(v["etcd_key"])).plaintext == \
                bytes.fromhex(v["plaintext"])
    # configmaps are not listed: identity only, encrypted data refused
    assert cfg.transformer_for("configmaps").write_label == "identity"


def test_json_and_legacy_kind() -> None:
    obj = {"kind": "EncryptionConfig", "apiVersion": "v1",
           "resources": [{"resources": ["secrets"], "providers": [{"aescbc": {"keys": [
               {"name": "k", "secret": K32}]}}, {"identity": {}}]}]}
    cfg = EncryptionConfiguration.parse(json.dumps(obj))
    assert cfg.transformer_for("secrets").write_label == "aescbc/k"
    assert "apiserver.config.k8s.io/v1" in cfg.dump()


def test_roundtrip_and_private_file(tmp_path: Path) -> None:
    cfg = EncryptionConfiguration.parse(VECTOR_CONFIG)
    path = tmp_path / "enc.yaml"
    digest = cfg.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert digest == config_hash(path.read_bytes())
    again = EncryptionConfiguration.load(path)
    assert again.to_obj() == cfg.to_obj()
    assert [p.type for p in again.resources[0].providers] == ["aesgcm", "aescbc", "secretbox", "identity"]
    assert K32 not in repr(again)  # secrets hidden from repr


def test_wildcard_resolution() -> None:
    text = cfg_text("  - identity: {}\n", "[events]",
                    f"- resources: ['*.apps']\n  providers:\n  - aesgcm: {{keys: [{{name: a, secret: {K16}}}]}}\n"
                    f"- resources: ['*.*']\n  providers:\n  - aescbc: {{keys: [{{name: b, secret: {K32}}}]}}\n")
    cfg = EncryptionConfiguration.parse(text)
    assert cfg.transformer_for("events").write_label == "identity"
    assert cfg.transformer_for("deployments.apps").write_label == "aesgcm/a"
    assert cfg.transformer_for("secrets").write_label == "aescbc/b"
    assert cfg.transformer_for("routes.route.openshift.io").write_label == "aescbc/b"


@pytest.mark.parametrize(("text", "needle"), [
    ("kind: Foo\napiVersion: v1\nresources: []\n", "expected apiVersion"),
    (cfg_text("  - aescbc: {keys: [{name: k, secret: 'c2hvcnQ='}]}\n"), "expected length, got 5"),
    (cfg_text("  - secretbox: {keys: [{name: k, secret: " + K16 + "}]}\n"), "expected one of [32]"),
    (cfg_text("  - aescbc: {keys: [{name: k, secret: 'not base64!'}]}\n"), "must be base64"),
    (cfg_text("  - aescbc: {keys: []}\n"), "keys (list of at least one key) is required"),
    (cfg_text("  - aescbc: {keys: [{name: k, secret: " + K32 + "}]}\n    identity: {}\n"), "more than one provider"),
    (cfg_text("  - {}\n"), "does not contain any of the expected providers"),
    (cfg_text("  - identity: {}\n", "[Secrets]"), "capital letters"),
    (cfg_text("  - identity: {}\n", "['*']"), "'*.*'"),
    (cfg_text("  - identity: {}\n", "['secrets.*']"), "<resource>.*"),
    (cfg_text("  - identity: {}\n", "[events.events.k8s.io]"), "core events"),
    (cfg_text("  - identity: {}\n", "[deployments.extensions]"), "extensions"),
    (cfg_text("  - identity: {}\n", "[serviceipallocations]"), "no REST API"),
    (cfg_text("  - identity: {}\n", "[secrets, secrets]"), "Duplicate"),
    (cfg_text("  - identity: {}\n", "[secrets, '*.']"), "overlaps"),
    (cfg_text("  - identity: {}\n", "['*.*']", "- resources: [secrets]\n  providers:\n  - identity: {}\n"),
     "masked by earlier rule"),
    (cfg_text("  - kms: {name: 'a:b', endpoint: 'unix:///k.sock'}\n"), "should not contain ':'"),
    (cfg_text("  - kms: {name: a, endpoint: 'tcp://x'}\n"), "only unix"),
    (cfg_text("  - kms: {apiVersion: v2, name: a, endpoint: 'unix:///k', cachesize: 5}\n"), "not supported in v2"),
    (cfg_text("  - kms: {name: a, endpoint: 'unix:///k', timeout: 0s}\n"), "positive"),
    (cfg_text("  - identity: {}\n", "[secrets]", "- resources: [configmaps]\n  providers:\n"
              "  - kms: {name: a, endpoint: 'unix:///k'}\n  - kms: {name: a, endpoint: 'unix:///k'}\n"), "Duplicate"),
    ("resources: [\n", "not valid YAML"),
    ("", "empty"),
    (cfg_text("  - identity: {}\n  - aescbc: {keys: [{name: k, secret: " + K32 + ", extra: 1}]}\n"), "unknown field"),
])
def test_malformed_configs_are_rejected_clearly(text: str, needle: str) -> None:
    with pytest.raises(EncryptionConfigError) as ei:
        EncryptionConfiguration.parse(text)
    assert needle in str(ei.value)
    assert ei.value.exit_code == 2


def test_yaml_error_never_quotes_the_secret() -> None:
    text = f"resources:\n- providers:\n  - aescbc: {{keys: [{{name: k, secret: {K32}}}]\n  bad: [\n"
    with pytest.raises(EncryptionConfigError) as ei:
        EncryptionConfiguration.parse(text)
    assert K32 not in str(ei.value) and "line" in str(ei.value)


def test_kms_defaults_and_recognition() -> None:
    cfg = EncryptionConfiguration.parse(cfg_text("  - kms: {name: mykms, endpoint: 'unix:///k.sock'}\n"
                                                 "  - identity: {}\n"))
    kms = cfg.resources[0].providers[0].kms
    assert kms is not None and kms.api_version == "v1" and kms.cachesize == 1000 and kms.timeout == "3s"
    t = cfg.transformer_for("secrets")
    assert not t.can_write and t.write_label == "kms-v1/mykms"


def test_key_generation_and_names(tmp_path: Path) -> None:
    a, b = generate_key("aescbc"), generate_key("aescbc")
    assert len(a) == 32 and a != b
    assert unique_key_name([]) == "key1"
    assert unique_key_name(["key1", "key7", "other"]) == "key8"
    p = tmp_path / "sub" / "f"
    write_private_file(p, b"x")
    write_private_file(p, b"y")
    assert p.read_bytes() == b"y" and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert [x.name for x in p.parent.iterdir()] == ["f"]


def test_resource_sets() -> None:
    both = select()
    assert [r.name for r in both] == list(DEFAULT_SET)
    sec = both[0]
    assert sec.prefixes == (b"/registry/secrets/", b"/kubernetes.io/secrets/")
    osh = select(layouts=["openshift"])
    assert [p for r in osh for p in r.prefixes] == [
        b"/kubernetes.io/secrets/", b"/kubernetes.io/configmaps/", b"/openshift.io/routes/",
        b"/openshift.io/oauth/accesstokens/", b"/openshift.io/oauth/authorizetokens/"]
    custom = select(["secrets"], ["kubernetes"], [parse_extra("widgets.example.com=/registry/example.com/widgets")])
    assert custom[1].prefixes == (b"/registry/example.com/widgets/",)
    assert resource_of(b"/registry/secrets/ns/a", custom) is custom[0]
    assert resource_of(b"/registry/secretsfoo/a", custom) is None
    with pytest.raises(UsageError):
        select(["nope"])
    with pytest.raises(UsageError):
        parse_extra("noprefix")


def _labels(cfg: EncryptionConfiguration, name: str) -> list[str]:
    rc = cfg.rule_for(name)
    assert rc is not None
    return [f"{p.type}:{','.join(k.name for k in p.keys)}" for p in rc.providers]


def test_plans_enable_rotate_prune_disable() -> None:
    phases, k1 = plan_enable(None, ["secrets", "configmaps"], "aescbc")
    assert [p.name for p in phases] == ["add-key", "promote"] and k1 == "key1"
    assert _labels(phases[0].config, "secrets") == ["identity:", "aescbc:key1"]
    cfg = phases[1].config
    assert _labels(cfg, "configmaps") == ["aescbc:key1", "identity:"]
    assert plan_enable(cfg, ["secrets"], "aescbc")[0] == []
    phases, k2 = plan_rotate(cfg, ["secrets", "configmaps"])
    assert k2 == "key2"
    assert _labels(phases[0].config, "secrets") == ["aescbc:key1,key2", "identity:"]
    cfg = phases[1].config
    assert _labels(cfg, "secrets") == ["aescbc:key2,key1", "identity:"]
    pruned, _notes = plan_prune(cfg, ["secrets", "configmaps"], {"secrets": {"aescbc/key2"}, "configmaps": set()})
    assert pruned is not None and _labels(pruned.config, "secrets") == ["aescbc:key2", "identity:"]
    kept, notes = plan_prune(cfg, ["secrets", "configmaps"], {"secrets": {"aescbc/key1"}, "configmaps": set()})
    assert kept is None and any("aescbc/key1" in n for n in notes)
    phases = plan_disable(cfg, ["secrets", "configmaps"])
    assert [p.name for p in phases] == ["promote"]
    assert _labels(phases[0].config, "secrets") == ["identity:", "aescbc:key2,key1"]
    # switching type keeps the old provider as a reader
    phases, k3 = plan_enable(cfg, ["secrets", "configmaps"], "aesgcm")
    assert k3 == "key3"
    assert _labels(phases[1].config, "secrets") == ["aesgcm:key3", "aescbc:key2,key1", "identity:"]
    with pytest.raises(UsageError, match="enable"):
        plan_rotate(plan_disable(cfg, ["secrets"])[0].config, ["secrets"])


def test_conditions() -> None:
    from collections import Counter

    from etcdwarden.encryption.status import ResourceStatus, condition

    def rs(name: str, write: str, **labels: int) -> ResourceStatus:
        c: Counter[str] = Counter({k.replace("_", "/"): v for k, v in labels.items()})
        return ResourceStatus(name, write, sum(c.values()), c)

    empty = EncryptionConfiguration()
    assert condition(empty, [rs("secrets", "identity", identity=3)]).reason == "EncryptionDisabled"
    enc = plan_enable(None, ["secrets", "configmaps"], "aescbc")[0][-1].config
    c = condition(enc, [rs("secrets", "aescbc/key1", aescbc_key1=3, identity=1), rs("configmaps", "aescbc/key1")])
    assert (c.status, c.reason) == ("False", "EncryptionInProgress")
    assert "Resource secrets is being encrypted (3 of 4 values on aescbc/key1, 1 to go)" in c.message
    c = condition(enc, [rs("secrets", "aescbc/key1", aescbc_key1=3), rs("configmaps", "identity")])
    assert c.message == "Resource configmaps is not encrypted"
    dis = plan_disable(enc, ["secrets"])[-1].config
    c = condition(dis, [rs("secrets", "identity", aescbc_key1=2, identity=1)])
    assert c.reason == "DecryptionInProgress" and "2 of 3 values still encrypted" in c.message
