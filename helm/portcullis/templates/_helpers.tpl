{{/*
Names, labels, images and the small pieces every template shares. Templates whose name
starts with `portcullis.` and is not documented in helm/README.md are internal: an
application chart should include only the `portcullis.verifierSidecar*` ones.
*/}}

{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<chart>`, or the release name alone when it already contains the chart's. */}}
{{- define "portcullis.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: (dict "root" $ "component" "verifier"). */}}
{{- define "portcullis.componentName" -}}
{{- printf "%s-%s" (include "portcullis.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "portcullis.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; (dict "root" $ "component" "control-plane"), component optional. */}}
{{- define "portcullis.labels" -}}
helm.sh/chart: {{ include "portcullis.chart" .root }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: portcullis
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/*
An image reference: (dict "image" .Values.x.image "appVersion" "0.1.0"). A digest wins
over the tag; the tag defaults to the appVersion given.
*/}}
{{- define "portcullis.image" -}}
{{- $tag := .image.tag | default .appVersion | toString -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else if $tag -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- else -}}
{{- fail (printf "image %s: set its tag or digest (no appVersion to default to)" .image.repository) -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* `host:port` for a listen variable; an IPv6 address gets brackets. */}}
{{- define "portcullis.listen" -}}
{{- if contains ":" (toString .address) -}}
{{- printf "[%s]:%d" .address (int64 .port) -}}
{{- else -}}
{{- printf "%s:%d" .address (int64 .port) -}}
{{- end -}}
{{- end -}}

{{/*
`env` entries for the settings that are set, as a YAML list: a list of (list NAME VALUE)
pairs. Null and "" mean "not set" (the binary's default applies); 0 and false are
values. Numbers are printed as integers (values arrive as float64).
*/}}
{{- define "portcullis.envIfSet" -}}
{{- $env := list -}}
{{- range . -}}
{{- $v := index . 1 -}}
{{- if not (or (kindIs "invalid" $v) (and (kindIs "string" $v) (eq $v ""))) -}}
{{- if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- $v = int64 $v -}}
{{- end -}}
{{- $env = append $env (dict "name" (index . 0) "value" (toString $v)) -}}
{{- end -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
An HTTP probe: (dict "timing" .Values.x.livenessProbe "path" "/healthz" "port" "http"
"tls" true). Only the timings come from values; the path and port are the contract's.
*/}}
{{- define "portcullis.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
  scheme: {{ ternary "HTTPS" "HTTP" (.tls | default false) }}
{{- with .timing }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* topologySpreadConstraints with the component's pod labels where none are given. */}}
{{- define "portcullis.topologySpread" -}}
{{- $selector := fromYaml (include "portcullis.selectorLabels" (dict "root" .root "component" .component)) -}}
{{- $out := list -}}
{{- range .constraints -}}
{{- $c := deepCopy . -}}
{{- if not (hasKey $c "labelSelector") -}}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) -}}
{{- end -}}
{{- $out = append $out $c -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* The Secret the control plane's and the verifier's secret env come from. */}}
{{- define "portcullis.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- include "portcullis.fullname" . -}}
{{- end -}}
{{- end -}}

{{/*
The key of one setting in that Secret: (dict "root" $ "setting" "databaseUrl"). With an
existing Secret, the key named in existingSecretKeys ("" = absent); with the chart's own,
a fixed name, and only when a value was given (or the setting is required).
*/}}
{{- define "portcullis.secretKey" -}}
{{- $s := .root.Values.secrets -}}
{{- $fixed := dict "databaseUrl" "database-url" "redisUrl" "redis-url" "redisPassword" "redis-password" "redisSentinelPassword" "redis-sentinel-password" "keyEncryptionKey" "key-encryption-key" "adminToken" "admin-token" "smtpUrl" "smtp-url" "smsWebhookToken" "sms-webhook-token" "jwksPublisherKey" "jwks-publisher-key" -}}
{{- if $s.existingSecret -}}
{{- index $s.existingSecretKeys .setting | default "" -}}
{{- else if index $s .setting -}}
{{- index $fixed .setting -}}
{{- end -}}
{{- end -}}

{{/*
`env` entries from the chart's Secret, as a YAML list: (dict "root" $ "pairs" (list (list
"PORTCULLIS_X" "setting") ...)); a setting without a key (see above) is left out.
*/}}
{{- define "portcullis.secretEnv" -}}
{{- $root := .root -}}
{{- $env := list -}}
{{- range .pairs -}}
{{- $key := include "portcullis.secretKey" (dict "root" $root "setting" (index . 1)) -}}
{{- if $key -}}
{{- $env = append $env (dict "name" (index . 0) "valueFrom" (dict "secretKeyRef" (dict "name" (include "portcullis.secretName" $root) "key" $key))) -}}
{{- end -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
A file from a Secret or a ConfigMap, mounted by a volume of this name: (dict "name"
"portcullis-redis-ca" "source" .Values.redis.ca "mode" 288). Renders nothing when the
source names neither.
*/}}
{{- define "portcullis.fileVolume" -}}
{{- $src := .source | default dict -}}
{{- if and $src.secretName $src.configMapName -}}
{{- fail (printf "%s: set either secretName or configMapName, not both" .name) -}}
{{- end -}}
{{- if $src.secretName }}
- name: {{ .name }}
  secret:
    secretName: {{ $src.secretName }}
    defaultMode: {{ .mode }}
    items:
      - key: {{ $src.key | default "ca.crt" }}
        path: ca.crt
{{- else if $src.configMapName }}
- name: {{ .name }}
  configMap:
    name: {{ $src.configMapName }}
    defaultMode: {{ .mode }}
    items:
      - key: {{ $src.key | default "ca.crt" }}
        path: ca.crt
{{- end -}}
{{- end -}}

{{- define "portcullis.hasFile" -}}
{{- $src := . | default dict -}}
{{- if or $src.secretName $src.configMapName -}}true{{- end -}}
{{- end -}}

{{/*
Redis connection env for either component, as a YAML list: (dict "redis" (dict
"secretName" ... "secretKey" ... "sentinels" [...] "sentinelMaster" "..." "passwordKey"
"..." "sentinelPasswordKey" "..." "sentinelTls" false "ca" {...})). Sentinels replace
the URL, and bring their own variables: the two passwords (keys of the same Secret, ""
= not set) and TLS. The URL and the passwords only ever come from a Secret.
*/}}
{{- define "portcullis.redisEnv" -}}
{{- $r := .redis -}}
{{- $env := list -}}
{{- if $r.sentinels -}}
{{- $env = append $env (dict "name" "PORTCULLIS_REDIS_SENTINELS" "value" (join "," $r.sentinels)) -}}
{{- $env = append $env (dict "name" "PORTCULLIS_REDIS_SENTINEL_MASTER" "value" (required "redis.sentinelMaster is required with redis.sentinels" $r.sentinelMaster)) -}}
{{- range $pair := list (list "PORTCULLIS_REDIS_PASSWORD" $r.passwordKey) (list "PORTCULLIS_REDIS_SENTINEL_PASSWORD" $r.sentinelPasswordKey) -}}
{{- with index $pair 1 -}}
{{- $ref := dict "name" (required "the Redis passwords need a Secret name" $r.secretName) "key" . -}}
{{- $env = append $env (dict "name" (index $pair 0) "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- end -}}
{{- $env = append $env (dict "name" "PORTCULLIS_REDIS_SENTINEL_TLS" "value" (ternary "true" "false" ($r.sentinelTls | default false))) -}}
{{- else -}}
{{- $ref := dict "name" (required "the Redis URL needs a Secret name" $r.secretName) "key" (required "the Redis URL needs a Secret key" $r.secretKey) -}}
{{- $env = append $env (dict "name" "PORTCULLIS_REDIS_URL" "valueFrom" (dict "secretKeyRef" $ref)) -}}
{{- end -}}
{{- if include "portcullis.hasFile" $r.ca -}}
{{- $env = append $env (dict "name" "PORTCULLIS_REDIS_CA_FILE" "value" "/etc/portcullis/redis-ca/ca.crt") -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/*
The release's Redis settings (`redis` and the Redis keys of the chart's Secret), as YAML
in the shape portcullis.redisEnv takes: the same for the control plane and the verifier.
*/}}
{{- define "portcullis.redis" -}}
{{- $r := .Values.redis -}}
{{- $key := dict -}}
{{- range $setting := list "redisUrl" "redisPassword" "redisSentinelPassword" -}}
{{- $_ := set $key $setting (include "portcullis.secretKey" (dict "root" $ "setting" $setting)) -}}
{{- end -}}
{{- toYaml (dict "secretName" (include "portcullis.secretName" .) "secretKey" $key.redisUrl "sentinels" ($r.sentinels | default list) "sentinelMaster" $r.sentinelMaster "passwordKey" $key.redisPassword "sentinelPasswordKey" $key.redisSentinelPassword "sentinelTls" ($r.sentinelTls | default false) "ca" ($r.ca | default dict)) -}}
{{- end -}}

{{/* HorizontalPodAutoscaler metrics from the two utilisation targets, as a YAML list. */}}
{{- define "portcullis.hpaMetrics" -}}
{{- $metrics := list -}}
{{- range $resource, $target := dict "cpu" .targetCPUUtilizationPercentage "memory" .targetMemoryUtilizationPercentage -}}
{{- if not (kindIs "invalid" $target) -}}
{{- $metrics = append $metrics (dict "type" "Resource" "resource" (dict "name" $resource "target" (dict "type" "Utilization" "averageUtilization" (int64 $target)))) -}}
{{- end -}}
{{- end -}}
{{- toYaml $metrics -}}
{{- end -}}
