{{/* The server's settings as its ROTATIONS_* variables (each the flag of the same name). */}}
{{- define "rotations.serverEnv" -}}
- name: ROTATIONS_MODEL_DIR
  value: {{ include "rotations.modelDir" . | quote }}
# Inside a pod every address is the pod's own; the binary alone defaults to loopback.
- name: ROTATIONS_HOST
  value: "0.0.0.0"
- name: ROTATIONS_PORT
  value: {{ .Values.server.port | quote }}
- name: ROTATIONS_HEALTH_PORT
  value: {{ .Values.server.healthPort | quote }}
{{- if .Values.metrics.enabled }}
- name: ROTATIONS_METRICS_HOST
  value: "0.0.0.0"
- name: ROTATIONS_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
{{- end }}
- name: ROTATIONS_EXECUTION_PROVIDER
  value: {{ .Values.server.executionProvider | quote }}
{{- if eq (toString .Values.server.threads) "" }}
- name: ROTATIONS_THREADS
  valueFrom:
    resourceFieldRef:
      containerName: server
      resource: requests.cpu
      divisor: "1"
{{- else }}
- name: ROTATIONS_THREADS
  value: {{ .Values.server.threads | quote }}
{{- end }}
- name: ROTATIONS_LOG_FORMAT
  value: {{ .Values.server.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.server.logFilter | quote }}
- name: ROTATIONS_SHUTDOWN_GRACE_SECONDS
  value: {{ .Values.server.shutdownGraceSeconds | quote }}
- name: ROTATIONS_MAX_BATCH_TOKENS
  value: {{ .Values.server.maxBatchTokens | quote }}
- name: ROTATIONS_MAX_BATCH_SENTENCES
  value: {{ .Values.server.maxBatchSentences | quote }}
- name: ROTATIONS_MAX_SENTENCES
  value: {{ .Values.server.maxSentences | quote }}
- name: ROTATIONS_MAX_MESSAGE_BYTES
  value: {{ .Values.server.maxMessageBytes | int64 | quote }}
- name: ROTATIONS_MAX_CONCURRENT_REQUESTS
  value: {{ .Values.server.maxConcurrentRequests | quote }}
- name: ROTATIONS_MAX_STREAM_SENTENCES
  value: {{ .Values.server.maxStreamSentences | int64 | quote }}
{{- if .Values.tls.enabled }}
- name: ROTATIONS_TLS_CERT
  value: {{ printf "%s/tls.crt" .Values.tls.mountPath | quote }}
- name: ROTATIONS_TLS_KEY
  value: {{ printf "%s/tls.key" .Values.tls.mountPath | quote }}
{{- end }}
{{- if .Values.tls.clientCA.existingSecret }}
- name: ROTATIONS_TLS_CLIENT_CA
  value: {{ printf "%s/ca.crt" .Values.tls.clientCA.mountPath | quote }}
{{- end }}
{{- if .Values.auth.existingSecret }}
{{- if eq .Values.auth.mode "file" }}
- name: ROTATIONS_API_KEYS_FILE
  value: {{ printf "%s/api-keys" .Values.auth.mountPath | quote }}
{{- else }}
- name: ROTATIONS_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.secretKey }}
{{- end }}
{{- end }}
{{- include "rotations.tracingEnv" (dict "root" . "service" .Values.tracing.serviceName) }}
{{- with .Values.server.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* OpenTelemetry export (tracing.*): the endpoint, service.name, and resource attributes naming
the pod (Kubernetes expands $(VAR) from the variables defined before). Empty without an endpoint. */}}
{{- define "rotations.tracingEnv" -}}
{{- $tracing := .root.Values.tracing }}
{{- if $tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $tracing.otlpEndpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .service | quote }}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_NAMESPACE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- $attributes := list "k8s.pod.name=$(K8S_POD_NAME)" "k8s.namespace.name=$(K8S_NAMESPACE_NAME)" "k8s.node.name=$(K8S_NODE_NAME)" "service.instance.id=$(K8S_POD_NAME)" }}
{{- range $key, $value := $tracing.resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%v" $key $value) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
{{- end }}
{{- end }}
