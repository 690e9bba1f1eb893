{{/*
Object names. Namespaced objects are "capstan" (or the overrides), with "-<revision>" for a
revisioned install, so two revisions can run side by side as with Istio's canary upgrades.
Cluster-scoped RBAC objects also carry the release namespace: two installs in two namespaces
must not fight over one ClusterRole.
*/}}
{{- define "capstan.name" -}}
{{- default "capstan" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "capstan.revSuffix" -}}
{{- if .Values.revision -}}-{{ .Values.revision }}{{- end -}}
{{- end -}}

{{- define "capstan.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s%s" (include "capstan.name" .) (include "capstan.revSuffix" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "capstan.clusterName" -}}
{{- printf "%s-%s" (include "capstan.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "capstan.validatingWebhookName" -}}
{{- printf "capstan-validation%s" (include "capstan.revSuffix" .) -}}
{{- end -}}

{{- define "capstan.mutatingWebhookName" -}}
{{- printf "capstan-sidecar-injector%s" (include "capstan.revSuffix" .) -}}
{{- end -}}

{{- define "capstan.meshConfigMapName" -}}
{{- printf "istio%s" (include "capstan.revSuffix" .) -}}
{{- end -}}

{{- define "capstan.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capstan.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "capstan.labels" -}}
{{ include "capstan.selectorLabels" . }}
istio.io/rev: {{ .Values.revision | default "default" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: capstan
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "capstan.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "capstan.proxyImage" -}}
{{- printf "%s:%s" .Values.proxy.image.repository (.Values.proxy.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The DNS names capstan's TLS serving certificate carries (xDS, CA and webhook). */}}
{{- define "capstan.dnsNames" -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list (printf "%s.%s.svc" (include "capstan.fullname" .) $ns) -}}
{{- if .Values.service.istiodAlias -}}
{{- $names = append $names (printf "istiod%s.%s.svc" (include "capstan.revSuffix" .) $ns) -}}
{{- end -}}
{{- join "," (concat $names .Values.xds.extraDnsNames) -}}
{{- end -}}

{{- define "capstan.checks" -}}
{{- if .Values.cloudMap.enabled -}}
{{- if not .Values.cloudMap.config.namespaces -}}
{{- fail "cloudMap.config.namespaces: name at least one Cloud Map namespace when cloudMap.enabled is true" -}}
{{- end -}}
{{- if and .Values.cloudMap.createMeshNamespace (eq (include "capstan.cloudMapMeshNamespace" .) .Release.Namespace) -}}
{{- fail "cloudMap.createMeshNamespace: cloudMap.config.meshNamespace is the release namespace, which Helm does not create as an object of the release" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- end -}}

{{/* The Service injected proxies dial for xDS and certificates (its name is in capstan's certificate). */}}
{{- define "capstan.proxyXdsService" -}}
{{- if .Values.service.istiodAlias -}}
{{- printf "istiod%s" (include "capstan.revSuffix" .) -}}
{{- else -}}
{{- include "capstan.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* Cloud Map (cloudMap.*): the namespace its services belong to, and whether capstan writes them there. */}}
{{- define "capstan.cloudMapMeshNamespace" -}}
{{- .Values.cloudMap.config.meshNamespace | default "cloud-map" -}}
{{- end -}}

{{- define "capstan.cloudMapMaterialize" -}}
{{- if and .Values.cloudMap.enabled (eq (.Values.cloudMap.config.mode | default "in-memory") "materialize") -}}true{{- end -}}
{{- end -}}

{{- define "capstan.cloudMapConfigMapName" -}}
{{- printf "%s-cloud-map" (include "capstan.fullname" .) -}}
{{- end -}}

{{/* Where the container reads the Cloud Map config file. */}}
{{- define "capstan.cloudMapConfigDir" -}}/etc/capstan/cloud-map{{- end -}}
