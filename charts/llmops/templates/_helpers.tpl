{{- define "llmops.name" -}}llmops-operator{{- end -}}

{{- define "llmops.labels" -}}
app.kubernetes.io/name: {{ include "llmops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: llmops
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "llmops.selector" -}}
app.kubernetes.io/name: {{ include "llmops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
