{{/*
Helpers for the kubetune chart. Every helper is prefixed with the chart name.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, truncated to 40 characters so that every derived name
("<fullname>-postgresql-hl", "<fullname>-kfp-pipelines", Job names with a hash) stays a valid DNS label.
*/}}
{{- define "kubetune.fullname" -}}
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

{{/* Chart name and version, as used by the chart label. */}}
{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels. */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one component: (dict "ctx" $ "component" "mlflow"). */}}
{{- define "kubetune.componentLabels" -}}
{{ include "kubetune.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "mlflow"). */}}
{{- define "kubetune.componentSelectorLabels" -}}
{{ include "kubetune.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The label that NetworkPolicies require to reach PostgreSQL and MinIO. */}}
{{- define "kubetune.accessLabel" -}}
kubetune.io/access: "true"
{{- end }}

{{/*
ServiceAccount of the chart's experiment Jobs (`kubetune submit`). Pipeline runs never use it: it has no
token mounted and may only create KFP runs (see kubetune.runServiceAccount).
*/}}
{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ServiceAccount of the registration Job. */}}
{{- define "kubetune.registrarServiceAccountName" -}}{{ include "kubetune.fullname" . }}-registrar{{- end }}

{{/* ServiceAccount of the `helm test` doctor pod. */}}
{{- define "kubetune.doctorServiceAccountName" -}}{{ include "kubetune.fullname" . }}-doctor{{- end }}

{{/*
ServiceAccount handed to pipeline runs (KUBETUNE_SERVICE_ACCOUNT): kfp.runServiceAccount, or "" so that
KFP picks its own runner account. KFP's API server replaces an empty account with
DEFAULTPIPELINERUNNERSERVICEACCOUNT (kubeflow/pipelines backend/src/apiserver/template/template.go@2.17.0):
"pipeline-runner" standalone (backend/src/apiserver/common/const.go@2.17.0), "default-editor" in
multi-user mode (manifests/kustomize/base/installs/multi-user/api-service/params.env@2.17.0).
*/}}
{{- define "kubetune.runServiceAccount" -}}
{{- .Values.kfp.runServiceAccount | default "" -}}
{{- end }}

{{/* The account runs actually use: the one named, else KFP's default runner account of the mode. */}}
{{- define "kubetune.effectiveRunServiceAccount" -}}
{{- if .Values.kfp.runServiceAccount -}}
{{- .Values.kfp.runServiceAccount -}}
{{- else if .Values.kfp.multiUser -}}
default-editor
{{- else -}}
pipeline-runner
{{- end -}}
{{- end }}

{{/* KFP namespace of runs and experiments (KUBETUNE_NAMESPACE). */}}
{{- define "kubetune.kfpNamespace" -}}
{{- .Values.kfp.namespace | default .Release.Namespace -}}
{{- end }}

{{/* "true" when the chart's services must run without an Istio sidecar (istio.sidecars, null = multi-user). */}}
{{- define "kubetune.servicesWithoutSidecar" -}}
{{- $sidecars := .Values.istio.sidecars -}}
{{- if kindIs "invalid" $sidecars -}}
{{- if .Values.kfp.multiUser }}true{{ end -}}
{{- else if not $sidecars -}}
true
{{- end -}}
{{- end }}

{{/*
The annotation that keeps Istio from injecting a sidecar. KFP puts it on every pipeline pod
(kubeflow/pipelines backend/src/apiserver/template/v2_template.go@2.17.0, SetAnnotationsToAllTemplatesIfKeyNotExist
with sidecar.istio.io/inject=false), so pipeline pods are outside the mesh.
*/}}
{{- define "kubetune.noSidecarAnnotation" -}}
sidecar.istio.io/inject: "false"
{{- end }}

{{/*
Pod annotations of the chart's long-running services (PostgreSQL, MinIO, MLflow, dashboard). A Kubeflow
profile namespace has istio-injection=enabled (kubeflow/dashboard
components/profile-controller/controllers/profile_controller.go@v2.0.0), and the profile's
AuthorizationPolicy "ns-owner-access-istio" (same file, getAuthorizationPolicy) admits same-namespace
traffic by `source.namespace`, which only an mTLS peer has: plain TCP from the sidecar-less pipeline pods
would be refused by a sidecar on the service. Without a sidecar, the policy does not apply and meshed
clients still reach the service (Istio's auto mTLS sends plain text to pods without a sidecar).
*/}}
{{- define "kubetune.serviceSidecarAnnotation" -}}
{{- if include "kubetune.servicesWithoutSidecar" . }}
{{- include "kubetune.noSidecarAnnotation" . }}
{{- end }}
{{- end }}

{{/*
Pod annotations of the chart's Jobs and test pods: never a sidecar, in every mode (harmless without
Istio). A Job whose pod has a classic sidecar never completes, because the proxy keeps running.
*/}}
{{- define "kubetune.runToCompletionPodAnnotations" -}}
annotations:
  {{- include "kubetune.noSidecarAnnotation" . | nindent 2 }}
{{- end }}

{{/*
Image reference from (dict "image" <values> "default" <tag when empty>).
A digest wins over the tag.
*/}}
{{- define "kubetune.imageRef" -}}
{{- $img := .image -}}
{{- $repo := $img.repository -}}
{{- if $img.registry }}{{ $repo = printf "%s/%s" $img.registry $img.repository }}{{ end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .default $img.tag | toString) -}}
{{- end -}}
{{- end }}

{{- define "kubetune.runtimeImage" -}}
{{- include "kubetune.imageRef" (dict "image" .Values.image "default" .Chart.AppVersion) -}}
{{- end }}

{{- define "kubetune.trainerImage" -}}
{{- include "kubetune.imageRef" (dict "image" .Values.trainerImage "default" .Chart.AppVersion) -}}
{{- end }}

{{/* Names of the objects other templates refer to. */}}
{{- define "kubetune.postgresql.fullname" -}}{{ include "kubetune.fullname" . }}-postgresql{{- end }}
{{- define "kubetune.minio.fullname" -}}{{ include "kubetune.fullname" . }}-minio{{- end }}
{{- define "kubetune.mlflow.fullname" -}}{{ include "kubetune.fullname" . }}-mlflow{{- end }}
{{- define "kubetune.dashboard.fullname" -}}{{ include "kubetune.fullname" . }}-dashboard{{- end }}
{{- define "kubetune.storageProxy.fullname" -}}{{ include "kubetune.fullname" . }}-storage-proxy{{- end }}
{{- define "kubetune.passwordsSecretName" -}}{{ include "kubetune.fullname" . }}-passwords{{- end }}
{{- define "kubetune.configMapName" -}}{{ include "kubetune.fullname" . }}-config{{- end }}

{{/* ---------------------------------------------------------------- database */}}

{{- define "kubetune.db.host" -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "%s.%s.svc" (include "kubetune.postgresql.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.externalDatabase.host -}}
{{- end -}}
{{- end }}

{{- define "kubetune.db.port" -}}
{{- if .Values.postgresql.enabled }}5432{{ else }}{{ .Values.externalDatabase.port | int }}{{ end -}}
{{- end }}

{{- define "kubetune.db.user" -}}
{{- if .Values.postgresql.enabled }}{{ .Values.postgresql.auth.username }}{{ else }}{{ .Values.externalDatabase.user }}{{ end -}}
{{- end }}

{{- define "kubetune.db.database" -}}
{{- if .Values.postgresql.enabled }}{{ .Values.postgresql.auth.database }}{{ else }}{{ .Values.externalDatabase.database }}{{ end -}}
{{- end }}

{{- define "kubetune.db.mlflowDatabase" -}}
{{- if .Values.postgresql.enabled }}{{ .Values.postgresql.auth.mlflowDatabase }}{{ else }}{{ .Values.externalDatabase.mlflowDatabase }}{{ end -}}
{{- end }}

{{/* "?sslmode=..." or nothing. */}}
{{- define "kubetune.db.query" -}}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.sslMode -}}
?sslmode={{ .Values.externalDatabase.sslMode }}
{{- end -}}
{{- end }}

{{/* Secret and key that hold the database password. */}}
{{- define "kubetune.db.secretName" -}}
{{- if .Values.postgresql.enabled -}}
{{- default (include "kubetune.passwordsSecretName" .) .Values.postgresql.auth.existingSecret -}}
{{- else -}}
{{- .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end }}

{{- define "kubetune.db.secretKey" -}}
{{- if .Values.postgresql.enabled -}}
{{- if .Values.postgresql.auth.existingSecret }}{{ .Values.postgresql.auth.existingSecretPasswordKey }}{{ else }}postgres-password{{ end -}}
{{- else -}}
{{- .Values.externalDatabase.existingSecretPasswordKey -}}
{{- end -}}
{{- end }}

{{/*
Connection URL of a database *without* the password: libpq (psycopg 2 and 3) reads the password from
PGPASSWORD, which the pods take from a Secret, so no env literal ever holds it.
(dict "ctx" $ "driver" "postgresql+psycopg" "database" "optuna")
*/}}
{{- define "kubetune.db.urlWithoutPassword" -}}
{{- $ctx := .ctx -}}
{{- printf "%s://%s@%s:%s/%s%s" .driver (include "kubetune.db.user" $ctx) (include "kubetune.db.host" $ctx) (include "kubetune.db.port" $ctx) .database (include "kubetune.db.query" $ctx) -}}
{{- end }}

{{/* env entry PGPASSWORD from the database Secret. */}}
{{- define "kubetune.db.passwordEnv" -}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kubetune.db.secretName" . }}
      key: {{ include "kubetune.db.secretKey" . }}
{{- end }}

{{/* ---------------------------------------------------------------- object store */}}

{{- define "kubetune.s3.endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s.%s.svc:9000" (include "kubetune.minio.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.externalS3.endpoint -}}
{{- end -}}
{{- end }}

{{- define "kubetune.s3.bucket" -}}
{{- if .Values.minio.enabled }}{{ .Values.minio.bucket }}{{ else }}{{ .Values.externalS3.bucket }}{{ end -}}
{{- end }}

{{- define "kubetune.s3.region" -}}
{{- if .Values.minio.enabled }}us-east-1{{ else }}{{ .Values.externalS3.region }}{{ end -}}
{{- end }}

{{- define "kubetune.s3.secretName" -}}
{{- if .Values.minio.enabled -}}
{{- default (include "kubetune.passwordsSecretName" .) .Values.minio.auth.existingSecret -}}
{{- else -}}
{{- .Values.externalS3.existingSecret -}}
{{- end -}}
{{- end }}

{{- define "kubetune.s3.accessKeyIdKey" -}}
{{- if .Values.minio.enabled -}}
{{- if .Values.minio.auth.existingSecret }}{{ .Values.minio.auth.rootUserKey }}{{ else }}minio-root-user{{ end -}}
{{- else -}}
{{- .Values.externalS3.accessKeyIdKey -}}
{{- end -}}
{{- end }}

{{- define "kubetune.s3.secretAccessKeyKey" -}}
{{- if .Values.minio.enabled -}}
{{- if .Values.minio.auth.existingSecret }}{{ .Values.minio.auth.rootPasswordKey }}{{ else }}minio-root-password{{ end -}}
{{- else -}}
{{- .Values.externalS3.secretAccessKeyKey -}}
{{- end -}}
{{- end }}

{{/* env entries AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the object store Secret. */}}
{{- define "kubetune.s3.credentialsEnv" -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ include "kubetune.s3.secretName" . }}
      key: {{ include "kubetune.s3.accessKeyIdKey" . }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "kubetune.s3.secretName" . }}
      key: {{ include "kubetune.s3.secretAccessKeyKey" . }}
{{- end }}

{{/* ---------------------------------------------------------------- secrets */}}

{{/* "true" when the chart generates the PostgreSQL password / the MinIO root credentials. */}}
{{- define "kubetune.generatesDbPassword" -}}
{{- if and .Values.postgresql.enabled (not .Values.postgresql.auth.existingSecret) }}true{{ end -}}
{{- end }}

{{- define "kubetune.generatesS3Credentials" -}}
{{- if and .Values.minio.enabled (not .Values.minio.auth.existingSecret) }}true{{ end -}}
{{- end }}

{{/* Secret that pipeline pods load as env (KUBETUNE_STORAGE, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). */}}
{{- define "kubetune.pipelineSecretName" -}}
{{- default (printf "%s-credentials" (include "kubetune.fullname" .)) .Values.pipelineSecret.existingSecret -}}
{{- end }}

{{/* ---------------------------------------------------------------- pods */}}

{{/* Restricted security context of containers that run the kubetune runtime image. */}}
{{- define "kubetune.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
Where the KFP API token is mounted in multi-user mode: the directory and file that the kfp client reads
(KF_PIPELINES_SA_TOKEN_PATH; kubeflow/manifests tests/poddefaults.access-ml-pipeline.kubeflow-user-example-com.yaml@26.03).
*/}}
{{- define "kubetune.kfpTokenDir" -}}/var/run/secrets/kubeflow/pipelines{{- end }}
{{- define "kubetune.kfpTokenFile" -}}token{{- end }}

{{/* env shared by every container that runs the kubetune runtime image. */}}
{{- define "kubetune.runtimeEnv" -}}
- name: HOME
  value: /tmp
{{- if .Values.kfp.multiUser }}
- name: KF_PIPELINES_SA_TOKEN_PATH
  value: {{ printf "%s/%s" (include "kubetune.kfpTokenDir" .) (include "kubetune.kfpTokenFile" .) }}
{{- end }}
{{- end }}

{{/* Volumes of a pod that runs the runtime image: a writable /tmp and, in multi-user KFP, the API token. */}}
{{- define "kubetune.runtimeVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- if .Values.kfp.multiUser }}
- name: kfp-token
  projected:
    sources:
      - serviceAccountToken:
          audience: pipelines.kubeflow.org
          expirationSeconds: 7200
          path: {{ include "kubetune.kfpTokenFile" . }}
{{- end }}
{{- end }}

{{- define "kubetune.runtimeVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kfp.multiUser }}
- name: kfp-token
  mountPath: {{ include "kubetune.kfpTokenDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "kubetune.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* ---------------------------------------------------------------- experiments */}}

{{/*
Every experiment Job as a list of dicts {name, jobName, source, key, configMap, hash}, shared by the
ConfigMap and Job templates. The hash covers the spec (or the referenced ConfigMap's content when the
cluster can be read) and every value the Job's spec is made of (the runtime image, the KFP host, the
multi-user token, the Job settings, security contexts, pull Secrets, the chart version for changes of
the template itself): Jobs are immutable, so anything that changes the Job's spec must change its name too.
*/}}
{{- define "kubetune.experimentJobs" -}}
{{- $jobs := list -}}
{{- $fullname := include "kubetune.fullname" . -}}
{{- $v := .Values -}}
{{- $inputs := dict "image" (include "kubetune.runtimeImage" .) "host" $v.kfp.host "multiUser" $v.kfp.multiUser "chart" .Chart.Version
      "job" $v.experimentJob "pod" $v.podSecurityContext "container" $v.containerSecurityContext "pullSecrets" $v.imagePullSecrets
      "serviceAccount" (include "kubetune.serviceAccountName" .) -}}
{{- $salt := toJson $inputs | sha256sum -}}
{{- range $i, $exp := .Values.experiments -}}
{{- $name := dig "metadata" "name" "" $exp -}}
{{- $hash := sha256sum (printf "%s|%s" (toJson $exp) $salt) | trunc 8 -}}
{{- $jobs = append $jobs (dict "name" $name "hash" $hash "configMap" (printf "%s-experiments" $fullname) "key" (printf "%s.yaml" $name) "inline" true) -}}
{{- end -}}
{{- range $i, $ref := .Values.experimentConfigMaps -}}
{{- $key := default "experiment.yaml" $ref.key -}}
{{- $content := "" -}}
{{- $cm := lookup "v1" "ConfigMap" $.Release.Namespace ($ref.configMap | default "") -}}
{{- if $cm }}{{ $content = dig "data" $key "" $cm }}{{ end -}}
{{- $hash := sha256sum (printf "%s/%s|%s|%s" $ref.configMap $key $content $salt) | trunc 8 -}}
{{- $jobs = append $jobs (dict "name" $ref.name "hash" $hash "configMap" $ref.configMap "key" $key "inline" false) -}}
{{- end -}}
{{- toJson (dict "jobs" $jobs) -}}
{{- end }}
