{{/*
Names, labels and the pieces every pod shares. The contract these follow is
docs/kubernetes.md ("The contract between the chart and the controller").
*/}}

{{- define "tuneship.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* `<release>-tuneship`, or the release name when it already says tuneship. Object
names append `-<component>`, so it is kept to 40 characters. */}}
{{- define "tuneship.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tuneship.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of a pod selector: name, instance, component. Input: dict root, component. */}}
{{- define "tuneship.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tuneship.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of every object. Input: dict root, component. */}}
{{- define "tuneship.labels" -}}
{{ include "tuneship.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tuneship
helm.sh/chart: {{ include "tuneship.chart" .root }}
{{- end }}

{{/* The labels that select every pod of the release (default-deny, DNS). */}}
{{- define "tuneship.releaseLabels" -}}
app.kubernetes.io/name: {{ include "tuneship.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* An image reference: `repository@digest`, else `repository:tag` with the tag
defaulting to the chart's appVersion. `latest` is refused (also by the schema).
Input: dict root, image. */}}
{{- define "tuneship.image" -}}
{{- $image := .image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- $tag := toString (default .root.Chart.AppVersion $image.tag) }}
{{- if eq $tag "latest" }}
{{- fail (printf "image %s: pin a version instead of the tag latest" $image.repository) }}
{{- end }}
{{- printf "%s:%s" $image.repository $tag }}
{{- end }}
{{- end }}

{{/* The stages in pipeline order, and the component that runs each. */}}
{{- define "tuneship.stages" -}}
{{- toJson (list "train" "merge" "export" "publish") }}
{{- end }}

{{- define "tuneship.stageComponents" -}}
{{- toJson (dict "train" "trainer" "merge" "merger" "export" "converter" "publish" "serving") }}
{{- end }}

{{/* The provider a stage really gets: a GPU merge is always a Job (an idle pool must
never hold a GPU). Input: dict root, stage. */}}
{{- define "tuneship.provider" -}}
{{- $provider := index .root.Values.providers .stage }}
{{- if and (eq .stage "merge") .root.Values.merger.gpu.enabled (ne $provider "static") }}
{{- "k8s-job" }}
{{- else }}
{{- $provider }}
{{- end }}
{{- end }}

{{/* {stage: provider} for every stage, as JSON. */}}
{{- define "tuneship.providers" -}}
{{- $root := . }}
{{- $out := dict }}
{{- range $stage := include "tuneship.stages" . | fromJsonArray }}
{{- $_ := set $out $stage (include "tuneship.provider" (dict "root" $root "stage" $stage)) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Does this component run as a pool Deployment? Input: dict root, component. */}}
{{- define "tuneship.isPool" -}}
{{- $providers := include "tuneship.providers" .root | fromJson }}
{{- $components := include "tuneship.stageComponents" .root | fromJson }}
{{- range $stage, $provider := $providers }}
{{- if and (eq $provider "k8s-pool") (eq (index $components $stage) $.component) }}true{{ end }}
{{- end }}
{{- end }}

{{/* The S3 endpoint (`host:port`) the stages use. */}}
{{- define "tuneship.s3Endpoint" -}}
{{- if .Values.s3.endpoint }}
{{- .Values.s3.endpoint }}
{{- else }}
{{- printf "%s-minio:9000" (include "tuneship.fullname" .) }}
{{- end }}
{{- end }}

{{/* The S3 endpoint's port, as NetworkPolicies need it. */}}
{{- define "tuneship.s3Port" -}}
{{- if not .Values.s3.endpoint }}9000
{{- else if regexMatch ":[0-9]+$" .Values.s3.endpoint }}
{{- regexFind "[0-9]+$" .Values.s3.endpoint }}
{{- else if .Values.s3.secure }}443
{{- else }}80
{{- end }}
{{- end }}

{{/* The Secret with the stages' S3 access and secret key, and its keys. */}}
{{- define "tuneship.s3SecretName" -}}
{{- default (printf "%s-s3" (include "tuneship.fullname" .)) .Values.s3.existingSecret }}
{{- end }}

{{- define "tuneship.minioRootSecretName" -}}
{{- default (printf "%s-minio-root" (include "tuneship.fullname" .)) .Values.minio.existingRootSecret }}
{{- end }}

{{/* The store environment of every pod that reads or writes artifacts. */}}
{{- define "tuneship.storeEnv" -}}
- name: TUNESHIP_STORE
  value: {{ printf "s3://%s%s" .Values.s3.bucket (ternary (printf "/%s" (trimAll "/" .Values.s3.prefix)) "" (ne .Values.s3.prefix "")) | quote }}
- name: TUNESHIP_S3_ENDPOINT
  value: {{ include "tuneship.s3Endpoint" . | quote }}
- name: TUNESHIP_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "tuneship.s3SecretName" . }}
      key: {{ .Values.s3.accessKeyKey }}
- name: TUNESHIP_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "tuneship.s3SecretName" . }}
      key: {{ .Values.s3.secretKeyKey }}
- name: TUNESHIP_S3_SECURE
  value: {{ ternary "1" "0" (and (ne .Values.s3.endpoint "") .Values.s3.secure) | quote }}
{{- with .Values.s3.region }}
- name: TUNESHIP_S3_REGION
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* HOME and the caches live on an emptyDir: the root filesystem is read-only.
Input: dict scratch (the work dir's size limit, or "" for none), tmp (/tmp's size
limit, default 2Gi). */}}
{{- define "tuneship.homeEnv" -}}
- name: HOME
  value: /home/tuneship
- name: XDG_CACHE_HOME
  value: /home/tuneship/.cache
- name: HF_HOME
  value: /home/tuneship/.cache/huggingface
{{- if .scratch }}
- name: TUNESHIP_WORK_DIR
  value: /work
{{- end }}
{{- end }}

{{/* The log format and level of every tuneship container (values `logs`). Input: root. */}}
{{- define "tuneship.logEnv" -}}
- name: TUNESHIP_LOG_FORMAT
  value: {{ .Values.logs.format | quote }}
- name: TUNESHIP_LOG_LEVEL
  value: {{ .Values.logs.level | quote }}
{{- end }}

{{- define "tuneship.homeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/tuneship
{{- if .scratch }}
- name: work
  mountPath: /work
{{- end }}
{{- end }}

{{- define "tuneship.homeVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmp | default "2Gi" }}
- name: home
  emptyDir:
    sizeLimit: 10Gi
{{- if .scratch }}
- name: work
  emptyDir:
    sizeLimit: {{ .scratch }}
{{- end }}
{{- end }}

{{/* The restricted Pod Security profile: the pod part. */}}
{{- define "tuneship.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The restricted Pod Security profile: the container part. */}}
{{- define "tuneship.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/* gRPC health probes of a tuneship server on 50051 (the health service needs no
token). The startup probe gives a slow start (torch, CUDA) five minutes before
liveness may restart the container. The kubelet's gRPC probe speaks no TLS: with
tls.enabled the probes connect to the port (tcpSocket) instead. */}}
{{- define "tuneship.grpcProbes" -}}
{{- $action := ternary (dict "tcpSocket" (dict "port" 50051)) (dict "grpc" (dict "port" 50051)) .Values.tls.enabled }}
startupProbe:
  {{- toYaml $action | nindent 2 }}
  periodSeconds: 5
  failureThreshold: 60
readinessProbe:
  {{- toYaml $action | nindent 2 }}
  periodSeconds: 10
  failureThreshold: 3
livenessProbe:
  {{- toYaml $action | nindent 2 }}
  periodSeconds: 20
  timeoutSeconds: 5
  failureThreshold: 6
{{- end }}

{{/* imagePullSecrets, priorityClassName, nodeSelector, tolerations, affinity of a pod.
Input: dict root, values (the component's values). */}}
{{- define "tuneship.scheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Container resources, with `count` GPUs of `resourceName` added to the limits.
Input: dict resources, gpu (a dict with count and resourceName, or nil). */}}
{{- define "tuneship.resources" -}}
{{- $resources := deepCopy (default dict .resources) }}
{{- if and .gpu (gt (int .gpu.count) 0) }}
{{- $limits := deepCopy (default dict $resources.limits) }}
{{- $_ := set $limits .gpu.resourceName (int .gpu.count) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/* The Secret holding the user API tokens (key api-tokens, one a line) and the worker
token (key worker-token): the user's, or the one the chart generates. */}}
{{- define "tuneship.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "tuneship.fullname" .)) }}
{{- end }}

{{/* Tokens and TLS of a pod (docs/security.md): the secrets are files, the variables
name them. Input: dict root, role: controller (both tokens; serves and dials the
workers), worker (the worker token; serves), client (a user token; the helm test pod),
console (no token: people log in with theirs; dials the controller as a client). */}}
{{- define "tuneship.authEnv" -}}
{{- $v := .root.Values }}
{{- $tlsClient := has .role (list "client" "console") }}
{{- if and $v.auth.enabled (ne .role "console") }}
{{- if eq .role "controller" }}
- name: TUNESHIP_API_TOKENS_FILE
  value: /etc/tuneship/auth/api-tokens
{{- end }}
{{- if eq .role "client" }}
- name: TUNESHIP_TOKEN_FILE
  value: /etc/tuneship/auth/api-tokens
{{- else }}
- name: TUNESHIP_WORKER_TOKEN_FILE
  value: /etc/tuneship/auth/worker-token
{{- end }}
{{- end }}
{{- if $v.tls.enabled }}
{{- if $tlsClient }}
- name: TUNESHIP_CA
  value: /etc/tuneship/tls/ca.crt
{{- if $v.tls.clientAuth }}
- name: TUNESHIP_CERT
  value: /etc/tuneship/tls/tls.crt
- name: TUNESHIP_KEY
  value: /etc/tuneship/tls/tls.key
{{- end }}
{{- else }}
- name: TUNESHIP_TLS_CERT
  value: /etc/tuneship/tls/tls.crt
- name: TUNESHIP_TLS_KEY
  value: /etc/tuneship/tls/tls.key
{{- if $v.tls.clientAuth }}
- name: TUNESHIP_TLS_CLIENT_CA
  value: /etc/tuneship/tls/ca.crt
{{- end }}
{{- end }}
{{- if eq .role "controller" }}
- name: TUNESHIP_WORKER_CA
  value: /etc/tuneship/tls/ca.crt
- name: TUNESHIP_WORKER_TLS_NAME
  value: {{ $v.tls.workerServerName | default (printf "%s-worker" (include "tuneship.fullname" .root)) | quote }}
{{- if $v.tls.clientAuth }}
- name: TUNESHIP_WORKER_CERT
  value: /etc/tuneship/tls/tls.crt
- name: TUNESHIP_WORKER_KEY
  value: /etc/tuneship/tls/tls.key
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The volume mounts of tuneship.authEnv's files. Input: dict root, role. */}}
{{- define "tuneship.authMounts" -}}
{{- if and .root.Values.auth.enabled (ne .role "console") }}
- name: auth
  mountPath: /etc/tuneship/auth
  readOnly: true
{{- end }}
{{- if .root.Values.tls.enabled }}
- name: tls
  mountPath: /etc/tuneship/tls
  readOnly: true
{{- end }}
{{- end }}

{{/* The volumes behind tuneship.authMounts: each pod gets only the keys of its role
(a worker pod never holds a user token; the console none). Input: dict root, role. */}}
{{- define "tuneship.authVolumes" -}}
{{- $tlsClient := has .role (list "client" "console") }}
{{- if and .root.Values.auth.enabled (ne .role "console") }}
- name: auth
  secret:
    secretName: {{ include "tuneship.authSecretName" .root }}
    items:
      {{- if ne .role "worker" }}
      - key: api-tokens
        path: api-tokens
      {{- end }}
      {{- if ne .role "client" }}
      - key: worker-token
        path: worker-token
      {{- end }}
{{- end }}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .root.Values.tls.secretName }}
    items:
      - key: ca.crt
        path: ca.crt
      {{- if or (not $tlsClient) .root.Values.tls.clientAuth }}
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
      {{- end }}
{{- end }}
{{- end }}
