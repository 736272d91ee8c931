{{/* The collector container, shared by the sidecar and the DaemonSet. */}}
{{- define "fastapi-doctor.collectorContainer" -}}
- name: otel-collector
  image: "{{ .Values.collector.image.repository }}:{{ .Values.collector.image.tag }}"
  imagePullPolicy: {{ .Values.collector.image.pullPolicy }}
  args: ["--config=/etc/otelcol/agent.yaml"]
  env:
    - name: GATEWAY_ENDPOINT
      value: {{ .Values.collector.gatewayEndpoint | quote }}
    - name: K8S_NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
  ports:
    - name: otlp-grpc
      containerPort: 4317
      protocol: TCP
      {{- if eq .Values.collector.mode "daemonset" }}
      hostPort: 4317
      {{- end }}
    - name: otlp-http
      containerPort: 4318
      protocol: TCP
      {{- if eq .Values.collector.mode "daemonset" }}
      hostPort: 4318
      {{- end }}
    - name: otel-health
      containerPort: 13133
      protocol: TCP
  readinessProbe:
    httpGet:
      path: /
      port: otel-health
  livenessProbe:
    httpGet:
      path: /
      port: otel-health
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsNonRoot: true
  {{- with .Values.collector.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: otel-collector-config
      mountPath: /etc/otelcol
      readOnly: true
{{- end }}

{{- define "fastapi-doctor.collectorVolume" -}}
- name: otel-collector-config
  configMap:
    name: {{ include "fastapi-doctor.component" (dict "root" . "suffix" "collector") }}
{{- end }}
