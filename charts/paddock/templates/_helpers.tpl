{{/*
Named templates shared by every file of the chart. Defines only: helm renders no output
from files whose name starts with "_".
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "paddock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name for every object: fullnameOverride, else the release name when it
already contains the chart's name ("paddock"), else "<release>-<chart>". Kept to 52
characters so that "<fullname>-zookeeper" and its pods' controller-revision-hash label
stay within Kubernetes' 63.
*/}}
{{- define "paddock.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "paddock.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "paddock.labels" -}}
helm.sh/chart: {{ include "paddock.chart" . }}
{{ include "paddock.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: paddock
{{- end }}

{{/* The labels that select the release's pods; each component adds its own. */}}
{{- define "paddock.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paddock.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "paddock.operator.labels" -}}
{{ include "paddock.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "paddock.operator.selectorLabels" -}}
{{ include "paddock.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "paddock.zookeeper.labels" -}}
{{ include "paddock.labels" . }}
app.kubernetes.io/component: zookeeper
{{- end }}

{{- define "paddock.zookeeper.selectorLabels" -}}
{{ include "paddock.selectorLabels" . }}
app.kubernetes.io/component: zookeeper
{{- end }}

{{/* Names of the objects that refer to each other. */}}
{{- define "paddock.operator.fullname" -}}
{{- printf "%s-operator" (include "paddock.fullname" .) }}
{{- end }}

{{- define "paddock.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "paddock.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create=false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "paddock.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "paddock.fullname" .) }}
{{- end }}

{{- define "paddock.webhook.configName" -}}
{{- printf "%s-sidecar-injector" (include "paddock.fullname" .) }}
{{- end }}

{{/* The Secret where operator replicas share the self-signed CA and serving cert. */}}
{{- define "paddock.webhook.tlsSecretName" -}}
{{- printf "%s-webhook-tls" (include "paddock.fullname" .) }}
{{- end }}

{{/* The Secret cert-manager writes the serving certificate into (cert-manager mode). */}}
{{- define "paddock.webhook.certManagerSecretName" -}}
{{- printf "%s-webhook-cert" (include "paddock.fullname" .) }}
{{- end }}

{{- define "paddock.operator.zkSecretName" -}}
{{- default (printf "%s-operator-zookeeper" (include "paddock.fullname" .)) .Values.operator.zookeeperCredentials.existingSecret }}
{{- end }}

{{- define "paddock.zookeeper.fullname" -}}
{{- printf "%s-zookeeper" (include "paddock.fullname" .) }}
{{- end }}

{{- define "paddock.zookeeper.headlessName" -}}
{{- printf "%s-zookeeper-headless" (include "paddock.fullname" .) }}
{{- end }}

{{/*
The connect string of the operator and of every sidecar. Managed ensemble: the client
Service by its full DNS name, since sidecars run in other namespaces. External: what the
user gives, required.
*/}}
{{- define "paddock.zookeeper.connectString" -}}
{{- if .Values.zookeeper.enabled }}
{{- printf "%s.%s.svc.%s:%d" (include "paddock.zookeeper.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.zookeeper.clientPort) }}
{{- else }}
{{- required "zookeeper.connectString is required when zookeeper.enabled=false (host:port,host:port of your ensemble)" .Values.zookeeper.connectString }}
{{- end }}
{{- end }}

{{/*
Each server of the managed ensemble by its pod's name, host:port comma-separated: where the
operator looks at the certificate each one serves.
*/}}
{{- define "paddock.zookeeper.servers" -}}
{{- $servers := list }}
{{- range $i := until (int .Values.zookeeper.replicas) }}
{{- $servers = append $servers (printf "%s-%d.%s.%s.svc.%s:%d" (include "paddock.zookeeper.fullname" $) $i (include "paddock.zookeeper.headlessName" $) $.Release.Namespace $.Values.clusterDomain (int $.Values.zookeeper.clientPort)) }}
{{- end }}
{{- join "," $servers }}
{{- end }}

{{/*
"[registry/]repository:tag": the tag defaulting to the chart's appVersion, the registry
being global.imageRegistry (none by default: the names scripts/images.sh gives the images
it builds, for `kind load image-archive`).
*/}}
{{- define "paddock.image" -}}
{{- $global := default dict .context.Values.global }}
{{- $registry := trimSuffix "/" (default "" $global.imageRegistry) }}
{{- $name := printf "%s:%s" .image.repository (default .context.Chart.AppVersion .image.tag) }}
{{- if $registry }}{{ printf "%s/%s" $registry $name }}{{ else }}{{ $name }}{{ end }}
{{- end }}

{{/* The container securityContext of the operator and ZooKeeper containers: the restricted profile. */}}
{{- define "paddock.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Labels of the monitoring objects: the release's and monitoring.labels. */}}
{{- define "paddock.monitoring.labels" -}}
{{ include "paddock.labels" . }}
app.kubernetes.io/component: monitoring
{{- with .Values.monitoring.labels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
TLS to the managed ensemble: "true" or "". The Secrets of the servers' and the operator's
certificates (keys ca.crt, tls.crt, tls.key): the user's, or the ones cert-manager issues.
*/}}
{{- define "paddock.zookeeper.tls" -}}
{{- if and .Values.zookeeper.enabled .Values.zookeeper.tls.enabled }}true{{ end }}
{{- end }}

{{/*
Whether the operator connects over TLS: to the managed ensemble when it serves TLS; to an
external one when zookeeper.tls.operatorSecretName names its certificate's Secret.
*/}}
{{- define "paddock.operator.zookeeperTls" -}}
{{- if include "paddock.zookeeper.tls" . }}true
{{- else if and (not .Values.zookeeper.enabled) .Values.zookeeper.tls.enabled .Values.zookeeper.tls.operatorSecretName }}true
{{- end }}
{{- end }}

{{/*
The operator issues the managed ensemble's certificates from a CA of its own (the default):
"true" or "". Else cert-manager does (certManager.enabled), or the Secrets are the user's
(secretName).
*/}}
{{- define "paddock.zookeeper.ownCa" -}}
{{- $tls := .Values.zookeeper.tls }}
{{- if and (include "paddock.zookeeper.tls" .) (not $tls.secretName) (not $tls.certManager.enabled) }}
{{- if $tls.certManager.issuerRef }}
{{- fail "zookeeper.tls.certManager.issuerRef is set but zookeeper.tls.certManager.enabled is false (the chart's default is now the operator's own CA): set zookeeper.tls.certManager.enabled=true to keep your issuer, or unset issuerRef to move to the operator's CA (a CA change: see the README's TLS to ZooKeeper)" }}
{{- end }}
{{- if $tls.clientCaSecretName }}
{{- fail "zookeeper.tls.clientCaSecretName is set, but with the operator's own CA the servers trust that CA alone and would refuse namespace certificates of another: unset clientCaSecretName (the operator's CA signs them), or use cert-manager or Secrets of yours" }}
{{- end -}}
true
{{- end }}
{{- end }}

{{/* The Secret of the operator's own CA. */}}
{{- define "paddock.zookeeper.caSecretName" -}}
{{- printf "%s-ca" (include "paddock.zookeeper.fullname" .) }}
{{- end }}

{{/* What the servers' certificate names: the client Service and each server's pod. */}}
{{- define "paddock.zookeeper.serverNames" -}}
{{- $zk := include "paddock.zookeeper.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $domain := .Values.clusterDomain }}
{{- printf "%s,%s.%s.svc,%s.%s.svc.%s,*.%s.%s.svc.%s" $zk $zk $ns $zk $ns $domain (include "paddock.zookeeper.headlessName" .) $ns $domain }}
{{- end }}

{{- define "paddock.zookeeper.tlsSecretName" -}}
{{- if .Values.zookeeper.tls.secretName }}
{{- .Values.zookeeper.tls.secretName }}
{{- else }}
{{- printf "%s-zookeeper-tls" (include "paddock.fullname" .) }}
{{- end }}
{{- end }}

{{- define "paddock.zookeeper.operatorTlsSecretName" -}}
{{- if not .Values.zookeeper.enabled }}
{{- .Values.zookeeper.tls.operatorSecretName }}
{{- else if .Values.zookeeper.tls.secretName }}
{{- required "zookeeper.tls.operatorSecretName is required with zookeeper.tls.secretName (the operator's client certificate: ca.crt, tls.crt, tls.key)" .Values.zookeeper.tls.operatorSecretName }}
{{- else }}
{{- include "paddock.zookeeper.tlsSecretName" . | trunc 0 }}
{{- printf "%s-operator-zookeeper-tls" (include "paddock.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The Secret with the CA (tls.crt, tls.key) that the operator signs namespace certificates
with, for namespaceAuth x509: the one named, else the release's own cert-manager CA; empty
when the operator signs them with its own CA.
*/}}
{{- define "paddock.zookeeper.clientCaSecretName" -}}
{{- $tls := .Values.zookeeper.tls }}
{{- if $tls.clientCaSecretName }}
{{- $tls.clientCaSecretName }}
{{- else if include "paddock.zookeeper.ownCa" . }}
{{- else if and .Values.zookeeper.enabled $tls.certManager.enabled (not $tls.secretName) (not $tls.certManager.issuerRef) }}
{{- printf "%s-ca" (include "paddock.zookeeper.fullname" .) }}
{{- else }}
{{- fail "zookeeper.tls.namespaceAuth=x509 needs zookeeper.tls.clientCaSecretName: a Secret with the tls.crt and tls.key of a CA the ZooKeeper servers trust (or set zookeeper.tls.namespaceAuth=digest)" }}
{{- end }}
{{- end }}

{{- define "paddock.zookeeper.issuerRef" -}}
{{- with .Values.zookeeper.tls.certManager.issuerRef }}
name: {{ required "zookeeper.tls.certManager.issuerRef.name is required when issuerRef is set" .name }}
kind: {{ .kind | default "Issuer" }}
group: {{ .group | default "cert-manager.io" }}
{{- else }}
name: {{ include "paddock.zookeeper.fullname" . }}-ca
kind: Issuer
group: cert-manager.io
{{- end }}
{{- end }}
