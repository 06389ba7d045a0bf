{{/* Names, labels and the small computations several templates share. */}}

{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "finetune-operator.fullname" -}}
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

{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "finetune-operator.imageRef" -}}
{{- $image := index . 0 }}
{{- $chart := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* A nodeSelector map as the operator's key=value,... flag. */}}
{{- define "finetune-operator.nodeSelectorFlag" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* Tolerations (key, optional value, effect) as the operator's key[=value]:Effect,... flag. */}}
{{- define "finetune-operator.tolerationsFlag" -}}
{{- $items := list -}}
{{- range . -}}
{{- if .value -}}
{{- $items = append $items (printf "%s=%s:%s" .key .value .effect) -}}
{{- else -}}
{{- $items = append $items (printf "%s:%s" .key .effect) -}}
{{- end -}}
{{- end -}}
{{- join "," $items -}}
{{- end -}}

{{/* The Service's DNS name: in the operator's own certificate, and what Prometheus verifies it for. */}}
{{- define "finetune-operator.serviceHost" -}}
{{- printf "%s.%s.svc" (include "finetune-operator.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The labels the operator gives every trainer pod (naming.py child_labels). */}}
{{- define "finetune-operator.trainerLabels" -}}
app.kubernetes.io/name: finetune-trainer
app.kubernetes.io/managed-by: finetune-operator
{{- end }}

{{- define "finetune-operator.progressUrl" -}}
{{- default (printf "https://%s.%s.svc:%d" (include "finetune-operator.fullname" .) .Release.Namespace (int .Values.progress.port)) .Values.progress.url }}
{{- end }}

{{/* The rules of files/operator-rbac.yaml for one scope, as a YAML list ("[]" when none applies). */}}
{{- define "finetune-operator.operatorRules" -}}
{{- $root := index . 0 }}
{{- $scopes := index . 1 }}
{{- $values := $root.Values }}
{{- $https := or $values.progress.enabled $values.metrics.enabled }}
{{- $conditions := dict
      "clusterwide" (empty $values.operator.watchNamespaces)
      "namespaced" (not (empty $values.operator.watchNamespaces))
      "progress" $values.progress.enabled
      "metrics" $values.metrics.enabled
      "httpsEndpoints" $https
      "selfSignedTLS" (and $https (empty $values.progress.tls.secretName))
      "sts" (not (empty $values.output.sts.credentialsSecret))
      "leaderElection" $values.leaderElection.enabled
      "preflight" $values.preflight.enabled
      "cache" (and $values.preflight.enabled $values.cache.enabled) }}
{{- $rules := list }}
{{- range ($root.Files.Get "files/operator-rbac.yaml" | fromYaml).rules }}
{{- $applies := has .scope $scopes }}
{{- range (default list .when) }}
{{- if not (hasKey $conditions .) }}
{{- fail (printf "files/operator-rbac.yaml: unknown condition %q" .) }}
{{- end }}
{{- $applies = and $applies (get $conditions .) }}
{{- end }}
{{- if $applies }}
{{- $rule := dict "apiGroups" .apiGroups "resources" .resources "verbs" (keys .verbs | sortAlpha) }}
{{- with .resourceNames }}
{{- $_ := set $rule "resourceNames" . }}
{{- end }}
{{- $rules = append $rules $rule }}
{{- end }}
{{- end }}
{{- toYaml $rules }}
{{- end }}

{{/*
Storage isolation between namespaces: one credentials Secret for a shared s3:// output gives every
tenant's pods keys to every tenant's prefix. Refused unless per-job STS credentials are on or the
admin acknowledges it (output.sharedCredentialsAcknowledged).
*/}}
{{- define "finetune-operator.checkOutputIsolation" -}}
{{- $output := .Values.output }}
{{- $s3 := hasPrefix "s3://" $output.defaultUri }}
{{- if $output.sts.credentialsSecret }}
{{- if not $s3 }}
{{- fail "output.sts.credentialsSecret: per-job credentials need an s3:// output.defaultUri" }}
{{- end }}
{{- if $output.credentialsSecret }}
{{- fail "output.sts.credentialsSecret: jobs get minted credentials; unset output.credentialsSecret, which would give every namespace the same keys" }}
{{- end }}
{{- else if and $s3 $output.credentialsSecret (not $output.sharedCredentialsAcknowledged) }}
{{- fail "output.credentialsSecret: one Secret for the shared output gives every namespace's pods keys to every other namespace's checkpoints and adapters. Set output.sts.credentialsSecret for per-job credentials (STS), or output.sharedCredentialsAcknowledged: true if every namespace is trusted alike" }}
{{- end }}
{{- end }}

{{/* The OpenAI-compatible API's pods: a name of their own, so the operator's Service and policy never select them. */}}
{{- define "finetune-operator.openaiApiSelectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}-openai-api
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "finetune-operator.openaiApiLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "finetune-operator.openaiApiSelectorLabels" . }}
app.kubernetes.io/component: openai-api
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}
