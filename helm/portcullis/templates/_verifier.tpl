{{/*
The verifier container and its volumes, shared by the standalone Deployment
(templates/verifier/deployment.yaml) and the sidecar (templates/_sidecar.tpl), so both
run with the same environment, probes and security context.

portcullis.verifier.container takes a dict:
  v           verifier-shaped values (image, bindAddress, ports, grpc, jwksUrl, config,
              policy, tls, resources, securityContext, probes, lifecycle, extraEnv,
              extraVolumeMounts)
  name        container name
  image       resolved image reference
  issuers     accepted issuers (list, not empty)
  redis       (dict "secretName" "secretKey" "sentinels" "sentinelMaster" "passwordKey"
              "sentinelPasswordKey" "sentinelTls" "ca"), see portcullis.redisEnv
  policyFile  path of the mounted policy file, or ""
  portPrefix  prefix of the port names ("" standalone, "verifier-" in a sidecar, where
              the application may already have an `http` port)
  native      true: `restartPolicy: Always`, for `initContainers` (native sidecar)
*/}}
{{- define "portcullis.verifier.container" -}}
{{- $v := .v -}}
{{- $cfg := $v.config -}}
{{- $http := printf "%shttp" .portPrefix -}}
- name: {{ .name }}
  image: {{ .image }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  ports:
    - name: {{ $http }}
      containerPort: {{ $v.ports.http }}
      protocol: TCP
    {{- if $v.grpc.enabled }}
    - name: {{ printf "%sgrpc" .portPrefix }}
      containerPort: {{ $v.ports.grpc }}
      protocol: TCP
    {{- end }}
  {{- $env := list (dict "name" "PORTCULLIS_VERIFIER_LISTEN" "value" (include "portcullis.listen" (dict "address" $v.bindAddress "port" $v.ports.http))) }}
  {{- $env = append $env (dict "name" "PORTCULLIS_VERIFIER_GRPC_LISTEN" "value" (ternary (include "portcullis.listen" (dict "address" $v.bindAddress "port" $v.ports.grpc)) "off" $v.grpc.enabled)) }}
  {{- if $v.jwksUrl }}
  {{- $env = append $env (dict "name" "PORTCULLIS_VERIFIER_JWKS_URL" "value" $v.jwksUrl) }}
  {{- else }}
  {{- $env = concat $env (include "portcullis.redisEnv" (dict "redis" .redis) | fromYamlArray) }}
  {{- end }}
  {{- $env = append $env (dict "name" "PORTCULLIS_VERIFIER_ISSUER" "value" (join "," .issuers)) }}
  {{- /* Always set: an empty list means any typ, which differs from the default. */}}
  {{- $env = append $env (dict "name" "PORTCULLIS_VERIFIER_TYP" "value" (join "," ($cfg.tokenTypes | default list))) }}
  {{- $env = concat $env (include "portcullis.envIfSet" (list
        (list "PORTCULLIS_VERIFIER_AUDIENCE" (join "," ($cfg.audiences | default list)))
        (list "PORTCULLIS_VERIFIER_COOKIE" $cfg.cookie)
        (list "PORTCULLIS_VERIFIER_LEEWAY_SECS" $cfg.leewaySecs)
        (list "PORTCULLIS_VERIFIER_MAX_STALENESS_SECS" $cfg.maxStalenessSecs)
        (list "PORTCULLIS_VERIFIER_RESYNC_SECS" $cfg.resyncSecs)
        (list "PORTCULLIS_VERIFIER_CACHE_ENTRIES" $cfg.cacheEntries)
        (list "PORTCULLIS_VERIFIER_MAX_CONNECTIONS" $cfg.maxConnections)
        (list "PORTCULLIS_VERIFIER_DRAIN_SECS" $cfg.drainSecs)
        (list "PORTCULLIS_VERIFIER_JWKS_TRUST_KEYS" $cfg.jwksTrustKeys)
        (list "PORTCULLIS_VERIFIER_DPOP_MAX_AGE_SECS" $cfg.dpopMaxAgeSecs)
        (list "PORTCULLIS_VERIFIER_DPOP_REPLAY_ENTRIES" $cfg.dpopReplayEntries)
        (list "PORTCULLIS_VERIFIER_POLICY_FILE" .policyFile)
        (list "PORTCULLIS_LOG" ($cfg.log | default "info"))) | fromYamlArray) }}
  {{- if $v.tls.enabled }}
  {{- $env = append $env (dict "name" "PORTCULLIS_VERIFIER_TLS_CERT_FILE" "value" "/etc/portcullis/verifier-tls/tls.crt") }}
  {{- $env = append $env (dict "name" "PORTCULLIS_VERIFIER_TLS_KEY_FILE" "value" "/etc/portcullis/verifier-tls/tls.key") }}
  {{- if $v.tls.clientCa.enabled }}
  {{- $env = append $env (dict "name" "PORTCULLIS_VERIFIER_TLS_CLIENT_CA_FILE" "value" "/etc/portcullis/verifier-client-ca/ca.crt") }}
  {{- end }}
  {{- end }}
  {{- $env = concat $env ($v.extraEnv | default list) }}
  env:
    {{- toYaml $env | nindent 4 }}
  livenessProbe:
    {{- include "portcullis.httpProbe" (dict "timing" $v.livenessProbe "path" "/healthz" "port" $http "tls" $v.tls.enabled) | nindent 4 }}
  readinessProbe:
    {{- include "portcullis.httpProbe" (dict "timing" $v.readinessProbe "path" "/readyz" "port" $http "tls" $v.tls.enabled) | nindent 4 }}
  {{- with $v.lifecycle }}
  lifecycle:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  {{- $mounts := list -}}
  {{- if $v.tls.enabled -}}
  {{- $mounts = append $mounts (dict "name" "portcullis-verifier-tls" "mountPath" "/etc/portcullis/verifier-tls" "readOnly" true) -}}
  {{- if $v.tls.clientCa.enabled -}}
  {{- $mounts = append $mounts (dict "name" "portcullis-verifier-client-ca" "mountPath" "/etc/portcullis/verifier-client-ca" "readOnly" true) -}}
  {{- end -}}
  {{- end -}}
  {{- if .policyFile -}}
  {{- $mounts = append $mounts (dict "name" "portcullis-verifier-policy" "mountPath" "/etc/portcullis/policy" "readOnly" true) -}}
  {{- end -}}
  {{- if and (not $v.jwksUrl) (include "portcullis.hasFile" .redis.ca) -}}
  {{- $mounts = append $mounts (dict "name" "portcullis-redis-ca" "mountPath" "/etc/portcullis/redis-ca" "readOnly" true) -}}
  {{- end -}}
  {{- $mounts = concat $mounts ($v.extraVolumeMounts | default list) -}}
  {{- with $mounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}

{{/*
The volumes the container above mounts: (dict "v" ... "redis" ... "policyConfigMap"
"<name or empty>" "policyKey" "policy.yaml" "mode" 288). The policy is mounted as a
directory, not with subPath, so ConfigMap edits reach the running verifier.
*/}}
{{- define "portcullis.verifier.volumes" -}}
{{- $v := .v -}}
{{- if $v.tls.enabled }}
- name: portcullis-verifier-tls
  secret:
    secretName: {{ $v.tls.secretName }}
    defaultMode: {{ .mode }}
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- if $v.tls.clientCa.enabled }}
- name: portcullis-verifier-client-ca
  secret:
    secretName: {{ $v.tls.clientCa.secretName | default $v.tls.secretName }}
    defaultMode: {{ .mode }}
    items:
      - key: {{ $v.tls.clientCa.key | default "ca.crt" }}
        path: ca.crt
{{- end }}
{{- end }}
{{- if .policyConfigMap }}
- name: portcullis-verifier-policy
  configMap:
    name: {{ .policyConfigMap }}
    items:
      - key: {{ .policyKey }}
        path: {{ .policyKey }}
{{- end }}
{{- if not $v.jwksUrl }}
{{- include "portcullis.fileVolume" (dict "name" "portcullis-redis-ca" "source" .redis.ca "mode" .mode) }}
{{- end }}
{{- end -}}

{{/* The policy ConfigMap's content from `rules`. */}}
{{- define "portcullis.verifier.policyData" -}}
{{ .key }}: |
  # Rendered by the portcullis chart from `policy.rules`: first matching rule wins; a
  # path no rule matches needs a valid token only.
  {{- toYaml (dict "rules" .rules) | nindent 2 }}
{{- end -}}

{{/* The name of the standalone verifier's rendered policy ConfigMap. */}}
{{- define "portcullis.verifier.policyConfigMapName" -}}
{{- printf "%s-policy" (include "portcullis.componentName" (dict "root" . "component" "verifier") | trunc 56 | trimSuffix "-") -}}
{{- end -}}
