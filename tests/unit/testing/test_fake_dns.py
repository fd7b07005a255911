"""The fake cluster DNS: a pod's JobSet name in an environment value becomes its IP."""

from __future__ import annotations

import pytest
from tuneship.testing.kube import resources as r
from tuneship.testing.kube.dns import Unresolved, resolve_env, resolver
from tuneship.testing.kube.store import ObjectStore

pytestmark = pytest.mark.unit


def cluster() -> tuple[ObjectStore, dict[str, str]]:
    store = ObjectStore(100)
    store.create(r.NAMESPACE, "", {"metadata": {"name": "ns"}})
    store.create(r.SERVICE, "ns", {"metadata": {"name": "js"}, "spec": {"clusterIP": "None"}})
    for rank in (0, 1):
        store.create(r.POD, "ns", {
            "metadata": {"name": f"js-node-0-{rank}-abcde"},
            "spec": {"hostname": f"js-node-0-{rank}", "subdomain": "js",
                     "containers": [{"name": "c", "image": "i"}]},
        })  # fmt: skip
    return store, {}


def test_a_pod_name_resolves_to_its_ip_once_it_has_one() -> None:
    store, own = cluster()
    resolve = resolver(store, own)
    env = {"PET_MASTER_ADDR": "js-node-0-0.js", "OTHER": "js.example.com", "PORT": "29400"}
    with pytest.raises(Unresolved, match=r"js-node-0-0\.js"):
        resolve_env(env, "ns", resolve)  # no IP yet: the container waits
    node0 = store.find(r.POD, "ns", "js-node-0-0-abcde")
    assert node0 is not None
    own[node0["metadata"]["uid"]] = "127.0.5.6"  # the kubelet gave it an address
    assert resolve_env(env, "ns", resolve) == {**env, "PET_MASTER_ADDR": "127.0.5.6"}
    assert resolve("ns", "js-node-0-0.js.ns.svc.cluster.local") == "127.0.5.6"


def test_names_without_a_headless_service_or_a_pod_are_left_alone() -> None:
    store, own = cluster()
    resolve = resolver(store, own)
    assert resolve("ns", "js-node-0-0.other") is None  # no Service "other": not a cluster name
    assert resolve("ns", "http://js-node-0-0.js:80") is None
    assert resolve("ns", "js-node-0-7.js") == ""  # the Service exists, no such pod (yet)
