{{- define "csb.name" -}}
{{- default (printf "capact-storage-%s" .Values.backend) .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "csb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "csb.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "csb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "csb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "csb.labels" -}}
{{ include "csb.selectorLabels" . }}
app.kubernetes.io/component: storage-backend
app.kubernetes.io/part-of: capact
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
capact.io/storage-backend: {{ .Values.backend }}
{{- end -}}

{{- define "csb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "csb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "csb.image" -}}
{{- $repo := replace "{backend}" .Values.backend .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- /* Whether the backend talks to the Kubernetes API with its own token. */ -}}
{{- define "csb.usesKubeApi" -}}
{{- if or (has .Values.backend (list "kubernetes-secret" "flux-helmrelease")) (and (eq .Values.backend "vault") (index (index .Values.config "vault") "APP_VAULT_K8S_ROLE")) -}}true{{- end -}}
{{- end -}}

{{- /* The RBAC rules of each Kubernetes-based backend: only the verbs its code
uses (kept equal to deploy/rbac/<backend>.yaml by tools/deploy-check). */ -}}
{{- define "csb.rbacRules" -}}
{{- if eq .Values.backend "kubernetes-secret" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update, delete]
{{- else if eq .Values.backend "flux-helmrelease" -}}
- apiGroups: [helm.toolkit.fluxcd.io]
  resources: [helmreleases]
  verbs: [get, list, watch, patch]
{{- end -}}
{{- end -}}

{{/* Rules only in the release's own namespace: flux-helmrelease's
     snapshots (APP_FLUX_SNAPSHOT_NAMESPACE is that namespace). */}}
{{- define "csb.ownNamespaceRules" -}}
{{- if eq .Values.backend "flux-helmrelease" -}}
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, create, update, delete]
{{- end -}}
{{- end -}}
