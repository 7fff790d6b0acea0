"""Kubernetes-compatible encryption at rest for values stored in etcd.

* :mod:`.providers` – identity, aescbc, aesgcm, secretbox (and recognition of KMS v1/v2 values);
* :mod:`.config` – the ``EncryptionConfiguration`` file, read, validated and written as kube-apiserver does;
* :mod:`.keys` – key generation, unique key names, private (0600) atomic files;
* :mod:`.resources` – which etcd prefixes hold which resources (Kubernetes and OpenShift layouts);
* :mod:`.migrate` – rewriting every value with the current write provider, safely and resumably;
* :mod:`.status` – counts by provider/key and OpenShift-shaped conditions;
* :mod:`.plan` – the configuration changes behind enable, disable and rotate.
"""
