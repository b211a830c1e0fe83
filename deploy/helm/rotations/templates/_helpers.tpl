{{/* Names and labels, the usual Helm way. */}}
{{- define "rotations.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rotations.fullname" -}}
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

{{- define "rotations.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rotations.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rotations.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "rotations.labels" -}}
helm.sh/chart: {{ include "rotations.chart" . }}
{{ include "rotations.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The server pods only (the Job's pods carry component=analyze and are not selected). */}}
{{- define "rotations.serverSelectorLabels" -}}
{{ include "rotations.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "rotations.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "rotations.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rotations.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Headless Service's in-cluster DNS name: every ready replica's address. */}}
{{- define "rotations.headlessHost" -}}
{{- printf "%s-headless.%s.svc.%s" (include "rotations.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{/* Model folder the server loads. */}}
{{- define "rotations.modelDir" -}}
{{- if eq .Values.model.source "bundled" }}
{{- .Values.model.bundledDir }}
{{- else }}
{{- printf "%s/%s" (trimSuffix "/" .Values.model.mountPath) .Values.model.dir }}
{{- end }}
{{- end }}

{{/* Seconds Kubernetes waits after the preStop hook starts before SIGKILL: must exceed the hook plus the server's own grace. */}}
{{- define "rotations.terminationGracePeriodSeconds" -}}
{{- $needed := add .Values.lifecycle.preStopSleepSeconds .Values.server.shutdownGraceSeconds }}
{{- if .Values.terminationGracePeriodSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed lifecycle.preStopSleepSeconds + server.shutdownGraceSeconds (%v), or requests in flight are killed" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- add $needed 15 }}
{{- end }}
{{- end }}

{{/* appProtocol of the gRPC ports: h2c (cleartext HTTP/2) unless TLS is on; then the value, if any. */}}
{{- define "rotations.grpcAppProtocol" -}}
{{- if .Values.service.appProtocol }}
{{- .Values.service.appProtocol }}
{{- else if not .Values.tls.enabled }}
{{- "kubernetes.io/h2c" }}
{{- end }}
{{- end }}

{{/* Fails on settings that cannot work together (values.schema.json checks each value alone). */}}
{{- define "rotations.validate" -}}
{{- if and (eq .Values.model.source "pvc") (not .Values.model.pvc.claimName) }}
{{- fail "model.source=pvc needs model.pvc.claimName (a PersistentVolumeClaim holding the exported model)" }}
{{- end }}
{{- if and (eq .Values.model.source "image") (not .Values.model.image.repository) }}
{{- fail "model.source=image needs model.image.repository (an image holding the exported model)" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "tls.enabled needs tls.existingSecret: a kubernetes.io/tls Secret (kubectl create secret tls NAME --cert=... --key=...)" }}
{{- end }}
{{- if and .Values.tls.clientCA.existingSecret (not .Values.tls.enabled) }}
{{- fail "tls.clientCA (mutual TLS) needs tls.enabled" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.metrics.enabled) }}
{{- fail "autoscaling on the queue depth needs metrics.enabled (Prometheus scrapes the metrics port)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor needs metrics.enabled" }}
{{- end }}
{{- if and .Values.job.enabled (or (not .Values.job.corpus.claimName) (not .Values.job.results.claimName)) }}
{{- fail "job.enabled needs job.corpus.claimName and job.results.claimName (PersistentVolumeClaims)" }}
{{- end }}
{{- end }}
