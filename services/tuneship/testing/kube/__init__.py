"""A fake Kubernetes API server with a fake kubelet, for tests without a cluster.

``FakeKube`` serves the REST API on ``127.0.0.1`` so that the real ``kubernetes``
Python client (``CoreV1Api``, ``BatchV1Api``, ``AppsV1Api``, ``DiscoveryV1Api``,
``kubernetes.watch.Watch``) and Helm's ``lookup`` work against it unchanged, and runs
the controllers and a kubelet that start pods as local processes on loopback.

Followed from the Kubernetes API documentation ("API Concepts", the API reference,
"Jobs", "Pod Lifecycle", "Garbage Collection", "Using RBAC Authorization"):

- Resources: core ``namespaces``, ``pods`` (+ ``status``, ``log``, ``eviction``),
  ``events``, ``secrets``, ``configmaps``, ``services``; ``batch/v1 jobs`` (+
  ``status``); ``apps/v1 deployments``, ``replicasets`` (+ ``status``);
  ``discovery.k8s.io/v1 endpointslices``; ``networking.k8s.io/v1 networkpolicies``
  (stored, not enforced); the custom resources ``jobset.x-k8s.io/v1alpha2 jobsets``,
  ``trainer.kubeflow.org/v1alpha1 trainjobs`` and ``clustertrainingruntimes``, each
  validated against its published schema (``crds.py``). Discovery: ``/version``, ``/api``,
  ``/api/v1``, ``/apis``, ``/apis/<group>[/<version>]``.
- Verbs from methods (GET item/collection/``watch=true``, POST, PUT, PATCH, DELETE
  item/collection); ``uid``, ``creationTimestamp``, ``generation``, ``generateName``;
  one global ``resourceVersion`` counter; ``Status`` error bodies with the API
  server's reasons and messages (404 ``NotFound``, 409 ``AlreadyExists``/``Conflict``,
  422 ``Invalid``, 403 ``Forbidden``, 410 ``Expired``, 400, 405, 415, 401).
- list with label and field selectors, ``limit``/``continue``; watch from a
  ``resourceVersion`` (chunked JSON lines, ADDED/MODIFIED/DELETED with the watch
  cache's selector semantics, ``timeoutSeconds``, ``allowWatchBookmarks``), from
  "now" after the current objects as ADDED when it is unset or ``0``, and the
  single ``ERROR`` event with a 410 ``Expired`` Status when it is older than the kept
  history (``history=``; ``compact()`` forgets it all).
- PATCH: JSON merge patch, strategic merge patch for the built-in list merge keys,
  JSON patch. PUT/PATCH with a stale ``resourceVersion`` is a ``Conflict``; writes
  to a resource with a ``status`` subresource leave the other half alone.
- Graceful deletion (``deletionTimestamp`` while a bound pod stops or finalizers
  remain), ``propagationPolicy`` Background/Foreground/Orphan with the API server's
  defaults (Jobs: ``Orphan``!), DeleteOptions preconditions, the garbage collector.
- RBAC for one namespaced Role (``role=``): ``apiGroups``, ``resources`` with
  ``pods/log`` subresources, ``verbs``, ``resourceNames``; token ``admin`` is
  unrestricted, a request without a token is ``system:anonymous``; without a Role
  everything is allowed (``AlwaysAllow``). Every request is logged in ``requests``
  (``ApiRequest``). ``tls=True`` serves HTTPS with a throwaway CA (``ca_file``),
  for client-go/Helm, which send bearer tokens only over TLS.
- Controllers: Jobs (pods from the template with the Job labels and the tracking
  finalizer, ``podFailurePolicy``, ``backoffLimit``, ``activeDeadlineSeconds``,
  ``suspend``, conditions incl. ``FailureTarget``/``SuccessCriteriaMet``,
  ``ttlSecondsAfterFinished``), Deployments -> ReplicaSets -> pods, EndpointSlices,
  Indexed Jobs (completion index, hostname), JobSets (``jobsets.py``: a headless Service
  and a Job per replica), TrainJobs (``trainjobs.py``: a JobSet from the
  ClusterTrainingRuntime with the torch plugin's ``PET_*`` variables), the scheduler
  (``nvidia.com/gpu`` capacity), Kueue admission of queued Jobs, JobSets and TrainJobs.
- The kubelet: one loopback IP per pod, env from the downward API, Secrets and
  ConfigMaps, ``$(VAR)`` expansion, init and sidecar containers, restart policies,
  readiness probes (gRPC health, TCP, HTTP, exec), SIGTERM then SIGKILL, exit codes
  and ``OOMKilled``, per-container logs, final phases as the kubelet sets them; pod
  DNS names (``<hostname>.<subdomain>``) in a container's environment given as that
  pod's loopback IP (``dns.py``: the fake has no resolver).

Left out (each would need a real cluster; nothing here pretends to have it): server-side
apply, ``dryRun`` (400), protobuf, field managers, admission webhooks other than
Kueue's, namespace deletion, most field validation (immutable pod specs and the like are
accepted), the ``resourceVersion`` semantics of list (always "most recent"),
``successPolicy``, NetworkPolicy enforcement, Job backoff delays, rolling updates (a new Deployment
template replaces all pods at once), Service virtual IPs (ClusterIPs are assigned but
nothing answers on them: use the EndpointSlices), nodes other than ``fake-node``,
node selectors, affinity, taints, CPU/memory accounting, liveness and startup probes,
volumes (nothing is mounted; point paths at files through ``Kubelet.env``), the
in-cluster service-account token (give processes a kubeconfig), and container images
(``Kubelet.images`` says what each image runs).

What clients written against it must handle, because real clusters do the same:
a Job DELETE without ``propagationPolicy`` orphans its pods (send ``Background``);
an EndpointSlice with no endpoints has ``endpoints: null``; a container that exits
0 after SIGTERM leaves its pod ``Succeeded`` (and its Job ``Complete``); a DELETE
that has to wait (finalizers, Foreground) answers with the object, not a Status; a
403 for a create names no object (``jobs.batch is forbidden: ...``).
"""

from tuneship.testing.kube.admission import (
    JOB_NAME_LABEL,
    JOB_UID_LABEL,
    LEGACY_JOB_NAME_LABEL,
    LEGACY_JOB_UID_LABEL,
    QUEUE_LABEL,
)
from tuneship.testing.kube.endpointslices import SERVICE_NAME_LABEL
from tuneship.testing.kube.fake import FakeKube
from tuneship.testing.kube.jobs import TRACKING_FINALIZER
from tuneship.testing.kube.node import NODE_NAME, Kubelet
from tuneship.testing.kube.rbac import ADMIN_TOKEN, ApiRequest
from tuneship.testing.kube.workloads import POD_TEMPLATE_HASH

__all__ = [
    "ADMIN_TOKEN",
    "JOB_NAME_LABEL",
    "JOB_UID_LABEL",
    "LEGACY_JOB_NAME_LABEL",
    "LEGACY_JOB_UID_LABEL",
    "NODE_NAME",
    "POD_TEMPLATE_HASH",
    "QUEUE_LABEL",
    "SERVICE_NAME_LABEL",
    "TRACKING_FINALIZER",
    "ApiRequest",
    "FakeKube",
    "Kubelet",
]
