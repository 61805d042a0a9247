{{/* Chart name, truncated to the 63 characters Kubernetes names allow. */}}
{{- define "medimg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release and chart, unless the release already contains the chart name. */}}
{{- define "medimg.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "medimg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "medimg.labels" -}}
helm.sh/chart: {{ include "medimg.chart" . }}
{{ include "medimg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "medimg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "medimg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Name of one component's resources: fullname-component. */}}
{{- define "medimg.component" -}}
{{- printf "%s-%s" (include "medimg.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The job's image: the JAX/CUDA image for the GPU variant, the TensorFlow one otherwise. */}}
{{- define "medimg.streamImage" -}}
{{- $image := ternary .Values.gpu.image .Values.image .Values.gpu.enabled }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}

{{/* Redis URL the job uses: the chart's own Redis, an external one, or none. */}}
{{- define "medimg.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s:6379/0" (include "medimg.component" (dict "root" . "component" "redis")) }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/* Pod and container security settings shared by the chart's own images. */}}
{{- define "medimg.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsUser }}
fsGroup: {{ .Values.runAsUser }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "medimg.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* The claim holding the studies. */}}
{{- define "medimg.studiesClaim" -}}
{{- default (include "medimg.component" (dict "root" . "component" "studies")) .Values.studies.existingClaim }}
{{- end }}

{{/* The claim holding the model registry; empty when the registry is on Cloud Storage. */}}
{{- define "medimg.modelsClaim" -}}
{{- if not (hasPrefix "gs://" .Values.model.registry) }}
{{- default (include "medimg.component" (dict "root" . "component" "models")) .Values.model.existingClaim }}
{{- end }}
{{- end }}
