{{/*
The Job template of a `k8s-job` stage (docs/kubernetes.md, "The Job template"): a
complete batch/v1 Job without metadata.name. The controller adds the name, the
tuneship.dev labels and annotation, TUNESHIP_TASK_ID on container `worker`, and
`spec.suspend: true` when the Job carries a Kueue queue label.
Input: dict root, component (trainer or merger), values (its values), gpu.
*/}}
{{- define "tuneship.jobManifest" -}}
{{- $root := .root }}
{{- $values := .values -}}
apiVersion: batch/v1
kind: Job
metadata:
  labels:
    {{- include "tuneship.selectorLabels" (dict "root" $root "component" .component) | nindent 4 }}
    # The controller creates these Jobs, one per attempt; Helm never sees them.
    app.kubernetes.io/managed-by: tuneship-controller
    app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
    app.kubernetes.io/part-of: tuneship
    helm.sh/chart: {{ include "tuneship.chart" $root }}
    {{- with $root.Values.kueue.queueName }}
    kueue.x-k8s.io/queue-name: {{ . }}
    {{- end }}
    {{- with $root.Values.kueue.priorityClass }}
    kueue.x-k8s.io/priority-class: {{ . }}
    {{- end }}
spec:
  # tuneship owns retries: a failed attempt is retried by the controller, from the
  # store's checkpoint.
  backoffLimit: 0
  activeDeadlineSeconds: {{ $values.job.activeDeadlineSeconds }}
  ttlSecondsAfterFinished: {{ $values.job.ttlSecondsAfterFinished }}
  podFailurePolicy:
    rules:
      # Exit code 3 is invalid input: no retry will help.
      - action: FailJob
        onExitCodes:
          containerName: worker
          operator: In
          values: [3]
      # Preemption and eviction are not the task's fault.
      - action: Ignore
        onPodConditions:
          - type: DisruptionTarget
            status: "True"
  template:
    metadata:
      labels:
        {{- include "tuneship.selectorLabels" (dict "root" $root "component" .component) | nindent 8 }}
      {{- with $values.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ include "tuneship.fullname" $root }}-worker
      automountServiceAccountToken: false
      enableServiceLinks: false
      # Long enough to upload a checkpoint after SIGTERM.
      terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
      securityContext:
        {{- include "tuneship.podSecurityContext" $root | nindent 8 }}
      {{- with include "tuneship.scheduling" (dict "root" $root "values" $values) }}
      {{- . | trim | nindent 6 }}
      {{- end }}
      containers:
        - name: worker
          image: {{ include "tuneship.image" (dict "root" $root "image" $values.image) }}
          imagePullPolicy: {{ $values.image.pullPolicy }}
          args: [serve, {{ .component }}, --once, --host, $(POD_IP), --port, "50051"]
          ports:
            - name: grpc
              containerPort: 50051
              protocol: TCP
          env:
            - name: POD_IP
              valueFrom:
                fieldRef:
                  fieldPath: status.podIP
            {{- include "tuneship.storeEnv" $root | nindent 12 }}
            {{- include "tuneship.homeEnv" (dict "scratch" $values.scratchSizeLimit) | nindent 12 }}
            {{- include "tuneship.authEnv" (dict "root" $root "role" "worker") | nindent 12 }}
            {{- include "tuneship.logEnv" $root | nindent 12 }}
          {{- include "tuneship.grpcProbes" $root | nindent 10 }}
          resources:
            {{- include "tuneship.resources" (dict "resources" $values.resources "gpu" .gpu) | nindent 12 }}
          securityContext:
            {{- include "tuneship.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            {{- include "tuneship.homeMounts" (dict "scratch" $values.scratchSizeLimit) | nindent 12 }}
            {{- include "tuneship.authMounts" (dict "root" $root "role" "worker") | nindent 12 }}
            - name: dshm
              mountPath: /dev/shm
      volumes:
        {{- include "tuneship.homeVolumes" (dict "scratch" $values.scratchSizeLimit) | nindent 8 }}
        {{- include "tuneship.authVolumes" (dict "root" $root "role" "worker") | nindent 8 }}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $values.shmSizeLimit }}
{{- end }}

{{/*
The NetworkPolicy of one training on more than one node (docs/kubernetes.md, "More than
one node"): its pods reach each other on every port (torchrun's rendezvous port, and
NCCL's, which NCCL picks). The controller creates one per JobSet/TrainJob, owned by it,
with the selectors set to that training's `tuneship.dev/task` label, which only its
pods carry; the placeholder below selects nothing.
*/}}
{{- define "tuneship.trainingNetworkPolicy" -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  labels:
    {{- include "tuneship.selectorLabels" (dict "root" . "component" "network") | nindent 4 }}
    app.kubernetes.io/managed-by: tuneship-controller
    app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
    app.kubernetes.io/part-of: tuneship
    helm.sh/chart: {{ include "tuneship.chart" . }}
spec:
  podSelector:
    matchLabels:
      tuneship.dev/task: set-by-the-controller
  policyTypes: [Ingress, Egress]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              tuneship.dev/task: set-by-the-controller
  egress:
    - to:
        - podSelector:
            matchLabels:
              tuneship.dev/task: set-by-the-controller
{{- end }}
