{{/* Names, labels, the image, and the checks values.schema.json cannot express. */}}

{{- define "apikeyd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-apikeyd, or the release name alone when it already says apikeyd. */}}
{{- define "apikeyd.fullname" -}}
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

{{- define "apikeyd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apikeyd.labels" -}}
helm.sh/chart: {{ include "apikeyd.chart" . }}
app.kubernetes.io/name: {{ include "apikeyd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "apikeyd.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: apikeyd
{{- end }}

{{/*
Selects the serving pods. The component label keeps the migrations Job's pod
out of the Service, the PodDisruptionBudget and the ServiceMonitor.
*/}}
{{- define "apikeyd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apikeyd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "apikeyd.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "apikeyd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "apikeyd.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The Secret the chart creates from database.url / redis.url (development only). */}}
{{- define "apikeyd.backendsSecretName" -}}
{{- printf "%s-backends" (include "apikeyd.fullname" .) }}
{{- end }}

{{/*
The same database URL for the migrations hook: a pre-install hook runs before
the release's ordinary resources exist, so it gets its own hook Secret.
*/}}
{{- define "apikeyd.migrationsSecretName" -}}
{{- printf "%s-migrations" (include "apikeyd.fullname" .) }}
{{- end }}

{{- define "apikeyd.hasDatabase" -}}
{{- if or .Values.database.existingSecret.name .Values.database.url }}true{{ end }}
{{- end }}

{{- define "apikeyd.hasRedis" -}}
{{- if or .Values.redis.existingSecret.name .Values.redis.url }}true{{ end }}
{{- end }}

{{/*
An env entry reading a backend URL from its Secret. Takes a dict:
env (variable), backend (.Values.database or .Values.redis), key (key in the
chart-created Secret), secret (name of the chart-created Secret).
*/}}
{{- define "apikeyd.urlEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      {{- if .backend.existingSecret.name }}
      name: {{ .backend.existingSecret.name }}
      key: {{ .backend.existingSecret.key }}
      {{- else }}
      name: {{ .secret }}
      key: {{ .key }}
      {{- end }}
{{- end }}

{{- define "apikeyd.databaseUrlEnv" -}}
{{- include "apikeyd.urlEnv" (dict "env" "APIKEYD_DATABASE_URL" "backend" .root.Values.database "key" "database-url" "secret" .secret) }}
{{- end }}

{{/* Pod volumes: the data directory and /tmp, both emptyDir. */}}
{{- define "apikeyd.volumes" -}}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataVolume.sizeLimit }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
{{- end }}

{{- define "apikeyd.volumeMounts" -}}
- name: data
  mountPath: /var/lib/apikeyd
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* The serving pods' TLS Secrets, when given: whole directories, never
subPath, so renewals arrive. Not the migrations Job's: it needs no TLS, and
a Secret made after install (cert-manager) would hold it up. */}}
{{- define "apikeyd.tlsVolumes" -}}
{{- with .Values.tls.secretName }}
- name: tls
  secret:
    secretName: {{ . }}
{{- end }}
{{- with .Values.tls.clientCa.secretName }}
- name: client-ca
  secret:
    secretName: {{ . }}
{{- end }}
{{- with .Values.redis.caCert.secretName }}
- name: redis-ca
  secret:
    secretName: {{ . }}
{{- end }}
{{- end }}

{{- define "apikeyd.tlsVolumeMounts" -}}
{{- if .Values.tls.secretName }}
- name: tls
  mountPath: /etc/apikeyd/tls
  readOnly: true
{{- end }}
{{- if .Values.tls.clientCa.secretName }}
- name: client-ca
  mountPath: /etc/apikeyd/client-ca
  readOnly: true
{{- end }}
{{- if .Values.redis.caCert.secretName }}
- name: redis-ca
  mountPath: /etc/apikeyd/redis-ca
  readOnly: true
{{- end }}
{{- end }}

{{/* A probe of the health service `service` (empty: the server as a whole):
gRPC, or HTTPS GET /healthz/... when the listeners speak TLS. */}}
{{- define "apikeyd.probe" -}}
{{- if .root.Values.tls.secretName -}}
httpGet:
  scheme: HTTPS
  port: {{ .root.Values.containerPorts.http }}
  path: {{ if .service }}/healthz/{{ .service }}{{ else }}/healthz{{ end }}
{{- else -}}
grpc:
  port: {{ .root.Values.containerPorts.grpc }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Value combinations the schema cannot rule out; called by every template that depends on them. */}}
{{- define "apikeyd.validate" -}}
{{- $v := .Values }}
{{- if and $v.database.existingSecret.name $v.database.url }}
{{- fail "apikeyd: set database.existingSecret.name or database.url, not both" }}
{{- end }}
{{- if and $v.redis.existingSecret.name $v.redis.url }}
{{- fail "apikeyd: set redis.existingSecret.name or redis.url, not both" }}
{{- end }}
{{- if and (not (include "apikeyd.hasDatabase" .)) (or $v.autoscaling.enabled (gt (int $v.replicaCount) 1)) }}
{{- fail "apikeyd: more than one replica needs a shared PostgreSQL database (database.existingSecret.name or database.url); with the embedded SQLite each pod would hold its own keys" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "apikeyd: autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and $v.redis.caCert.secretName (not (or $v.redis.url $v.redis.existingSecret.name)) }}
{{- fail "apikeyd: redis.caCert needs Redis (redis.existingSecret.name or redis.url, a rediss:// one)" }}
{{- end }}
{{- if and $v.redis.caCert.secretName $v.redis.url (not (hasPrefix "rediss://" $v.redis.url)) }}
{{- fail "apikeyd: redis.caCert is for TLS to Redis: redis.url must be rediss://" }}
{{- end }}
{{- if and $v.tls.clientCa.secretName (not $v.tls.secretName) }}
{{- fail "apikeyd: tls.clientCa needs tls.secretName too (the server's own certificate)" }}
{{- end }}
{{- if and (eq (toString $v.config.dataPlaneAuth) "mtls") (not $v.tls.clientCa.secretName) }}
{{- fail "apikeyd: config.dataPlaneAuth mtls needs tls.clientCa.secretName (the CA that signs the callers' certificates)" }}
{{- end }}
{{- if le (int $v.terminationGracePeriodSeconds) (add (int $v.preStopSleepSeconds) (int $v.config.shutdownGraceSecs)) }}
{{- fail "apikeyd: terminationGracePeriodSeconds must exceed preStopSleepSeconds + config.shutdownGraceSecs, or in-flight calls are killed mid-drain" }}
{{- end }}
{{- end }}
