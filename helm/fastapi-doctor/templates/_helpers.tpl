{{/* Chart name, trimmed to 63 characters (a DNS label). */}}
{{- define "fastapi-doctor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already holds the chart name. */}}
{{- define "fastapi-doctor.fullname" -}}
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

{{/* A name derived from the full name with a suffix, still within 63 characters. */}}
{{- define "fastapi-doctor.component" -}}
{{- $full := include "fastapi-doctor.fullname" .root }}
{{- printf "%s-%s" ($full | trunc (int (sub 62 (len .suffix))) | trimSuffix "-") .suffix }}
{{- end }}

{{- define "fastapi-doctor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "fastapi-doctor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "fastapi-doctor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fastapi-doctor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fastapi-doctor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fastapi-doctor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fastapi-doctor.serviceName" -}}
{{- default (include "fastapi-doctor.fullname" .) .Values.agent.serviceName }}
{{- end }}

{{/* The agent's OTLP endpoint: the sidecar on localhost, the node's collector, or agent.otlpEndpoint. */}}
{{- define "fastapi-doctor.otlpEndpoint" -}}
{{- if .Values.collector.enabled }}
{{- if eq .Values.collector.mode "sidecar" }}http://localhost:4317{{ else }}http://$(HOST_IP):4317{{ end }}
{{- else }}
{{- .Values.agent.otlpEndpoint }}
{{- end }}
{{- end }}

{{/* Stop early on values that cannot work together, saying what to change. */}}
{{- define "fastapi-doctor.validate" -}}
{{- if and .Values.collector.enabled (eq .Values.collector.mode "sidecar") (not .Values.app.enabled) }}
{{- fail "collector.mode=sidecar runs the collector inside the app's pods and needs app.enabled=true: set collector.mode=daemonset, or collector.enabled=false" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.service.enabled) }}
{{- fail "serviceMonitor.enabled=true scrapes the side server through the chart's Service: set service.enabled=true, or serviceMonitor.enabled=false" }}
{{- end }}
{{- if and .Values.service.enabled (not .Values.app.enabled) (empty .Values.service.selector) }}
{{- fail "service.enabled=true with app.enabled=false needs service.selector: the labels of your own app pods" }}
{{- end }}
{{- if and .Values.collector.enabled .Values.agent.otlpEndpoint }}
{{- fail "agent.otlpEndpoint is for an app without the chart's collector: leave it empty while collector.enabled=true (the agent then sends to the collector)" }}
{{- end }}
{{- if and .Values.collector.enabled (not .Values.agent.enabled) }}
{{- fail "collector.enabled=true receives the agent's telemetry and needs agent.enabled=true" }}
{{- end }}
{{- end }}

{{/* Downward-API variables of the app container: the pod's identity in the agent's resource. */}}
{{- define "fastapi-doctor.podIdentityEnv" -}}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: K8S_POD_UID
  valueFrom:
    fieldRef:
      fieldPath: metadata.uid
- name: K8S_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: K8S_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: HOST_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}

{{/* Name of the Secret holding the side server's token: the user's, or the one the chart creates. */}}
{{- define "fastapi-doctor.tokenSecret" -}}
{{- .Values.agent.authToken.existingSecret | default (include "fastapi-doctor.component" (dict "root" . "suffix" "doctor-token")) }}
{{- end }}
